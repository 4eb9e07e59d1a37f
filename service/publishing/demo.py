"""Original demo posts, so a fresh install has something to read and to gate: at least one in each access mode."""
from __future__ import annotations

from slugify import slugify
from sqlalchemy import select

from ..extensions import db
from ..models import Post
from . import posts

POSTS = [
    ("Welcome aboard: what this newsletter is for", "public", """\
*The Slow Harbour* is a weekly letter about small ports, the people who keep them working, and the
pleasure of getting somewhere slowly.

Each issue follows one harbour through a season: the ferry timetable, the chandlery that also sells
ice cream, the tide tables pinned to the café wall. Some letters are free for everyone; some you may
sample a few times a month before subscribing; most are for subscribers, who also get the whole archive.

Subscribing costs nothing but an email address. You confirm it once, and every new letter arrives in
your inbox at the pace you choose: daily, weekly, or not at all while you are away.
"""),
    ("The ferry that waits for the baker", "subscribers", """\
At a quarter to seven the morning ferry is ready, its ramp down and its engine ticking over, but it
does not leave. Everyone on the quay knows why: the baker from the hill village has not arrived yet.

Nobody wrote this rule down. It grew out of thirty winters in which the island had no oven of its
own, and a boat that sailed without the bread meant a day of crackers for two hundred people.

<!--more-->

The current skipper, who took over the route four years ago, tried once to keep to the printed time.
She describes the reception on the island that afternoon as "educational". Since then the timetable
says 06:45 and the crew says "after the bread", and both statements are considered accurate.

What interests me is how many small systems run on this kind of unwritten agreement. The harbour
master lets the fish buyers park on the yellow lines until eight. The fuel pump opens early on race
days. None of it is official, and all of it would stop working the moment someone tried to make it so.

Next week: the tide clock that has been wrong, on purpose, since 1987.
"""),
    ("A tide clock that is wrong on purpose", "metered", """\
The clock above the harbour office has one hand and no numbers. It shows the state of the tide, and
for as long as anyone can remember it has run about twenty minutes fast.

The explanation most people give is that it was set badly after a repair and nobody bothered to fix
it. The harbour master's explanation is different, and better.

Twenty minutes is roughly how long it takes a dinghy to get from the inner moorings to the bar. If
you read the clock as "high water", you arrive at the bar with the tide just turning, which is the
safest moment to cross. The clock is not wrong; it is answering a more useful question than the one
on its face.

I have started to notice other instruments like this. The bus stop sign that says the last bus leaves
at ten, when it actually leaves at ten past, because the driver knows people run late from the pub.
The menu that lists the soup as "until it's gone", which is the most honest timetable in town.

Tools that encode local knowledge are fragile in a particular way: they look like mistakes to
newcomers. The harbour has a note taped below the clock now, in careful capitals: DO NOT CORRECT.
"""),
    ("Four in the morning on the fish quay", "popup", """\
The fish quay wakes before anything else in town. At four the lights over the market hall come on
one bank at a time, and the first vans back up to the loading doors with their reversing alarms
turned down, a courtesy nobody asked for and everybody notices.

The boats that went out at midnight are already on their way in. You can tell which is which from
the quay by the sound of the engines long before you can read a name: the old trawler knocks, the
two crabbers hum, and the yellow boat with the new gearbox whines like a kettle about to boil.

<!--more-->

The auction starts at half past five and lasts about as long as a cup of tea. The auctioneer does not
shout. He walks along the rows of boxes with a tablet held against his chest and murmurs prices, and
the buyers answer with a raised finger, a nod, once with a cough that I am still not sure was a bid.

In between the landings there is a great deal of waiting, and the waiting has its own rules. The
bench by the ice machine belongs to the retired skippers. The young buyers stand, because sitting
would suggest they have time. The harbour cat patrols the gap between them with the air of an
inspector who has seen all this before and expects to file a report.

By seven it is over. The boxes are gone, the floor is hosed down, the vans have left for the
restaurants inland, and the café on the corner opens for people who have already done a day's work.
The rest of the town starts to stir, and walks past the clean, wet, empty market hall without
knowing that anything happened there at all.

I went three mornings in a row to write this. On the third, one of the skippers on the bench moved
along without a word to make room. I am counting that as the best review this letter has had.
"""),
    ("Winter lists: what the chandlery sells in January", "subscribers", """\
In summer the chandlery is a shop for visitors: flags, postcards, a bucket of shrimping nets by the
door. In January it turns back into what it was built to be.

The shelves fill up with shackles and antifouling paint, with rope sold by the metre from drums that
have been in the same corner since before the owner was born. The postcards go into a box under the
counter. The kettle comes out.

Most of the winter trade is conversation. Someone comes in for a single split pin and stays an hour
to talk about a mooring chain. The owner keeps a notebook of who needs what before spring, and by
March the notebook is a better forecast of the season than anything the council publishes.

I asked to see it. The entries are short: a name, a boat, a part, a date. Read together they make a
map of the harbour's ambitions for the year: who is finally replacing the engine, who is selling up,
who has promised their grandchildren a first sail in June.
"""),
]


def load() -> list[Post]:
    """Create the demo posts that do not exist yet; published, newest last."""
    created = []
    for title, visibility, body in POSTS:
        if db.session.scalar(select(Post.id).where(Post.slug == slugify(title, max_length=80))):
            continue
        created.append(posts.create(title, body, visibility=visibility, published=True))
    return created
