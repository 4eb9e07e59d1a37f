"""Acting as a publisher in the studio with a test client: an account, a signed-in browser, forms with their token."""
from __future__ import annotations

from service.studio import staff

from .helpers import csrf_token

PASSWORD = "harbour-lights-42"
COOKIE = "kr_studio"


def make_staff(app, email: str = "editor@example.org", password: str | None = PASSWORD, name: str = "Edith"):
    """A staff account (with this password set) made through the domain functions the CLI uses."""
    with app.app_context():
        account = staff.add(email, name)
        if password:
            staff._set_password(account, password, password)
        return account.id


class Publisher:
    """One staff member with one browser (a test client)."""

    def __init__(self, client, email: str = "editor@example.org", password: str = PASSWORD):
        self.client, self.email, self.password = client, email, password

    def sign_in(self, ip: str = "198.51.100.7"):
        page = self.client.get("/studio/signin")
        return self.client.post("/studio/signin", data={"csrf_token": csrf_token(page.data), "email": self.email,
                                                         "password": self.password}, environ_base={"REMOTE_ADDR": ip})

    def cookie(self) -> str | None:
        found = self.client.get_cookie(COOKIE, path="/studio")
        return found.value if found else None

    def form(self, page_path: str, target: str, /, **fields):
        """GET the page holding the form, then POST the form to `target` with its CSRF token."""
        page = self.client.get(page_path)
        assert page.status_code == 200, page.data[:500]
        return self.client.post(target, data={"csrf_token": csrf_token(page.data), **fields})
