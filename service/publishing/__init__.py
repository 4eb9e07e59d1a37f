"""Publishing: posts, their content (Markdown, sanitising, teasers), the publication settings, the page memory, demo posts."""
