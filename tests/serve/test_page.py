"""The page at / in headless Chromium: for a known user and for a new user's titles, the top-10
table renders with titles, predicted ratings and P(like), and a screenshot is taken.

Needs Debian's `chromium` (`.ci/run` installs it). Without it the test is skipped, except where
MTREC_REQUIRE_BROWSER=1 (set by `.ci/run`), where a missing browser is a failure."""

import html.parser
import os
import shutil
import subprocess

import pytest

pytest.importorskip("fastapi")

from serve_helpers import running

from mtrec.serve import Served, Settings, create_app

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# without the background-networking flags Chromium keeps dialling out from a closed network
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def page_server(run_dir):
    served = Served.load(run_dir, device="cpu")
    with running(create_app(run_dir, Settings(), loader=lambda path: served)) as client:
        yield client, served


def _browser(tmp_path, *args) -> subprocess.CompletedProcess:
    if BROWSER is None:
        if os.environ.get("MTREC_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "chromium is not installed (apt-get install -y chromium), and MTREC_REQUIRE_BROWSER=1"
            )
        pytest.skip("chromium is not installed")
    profile = tmp_path / "profile"
    return subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Rows(html.parser.HTMLParser):
    """The result table's rows as lists of cell texts, and the error line's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.error, self._cell, self._in_rows, self._in_error = [], "", None, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_rows |= attrs.get("id") == "rows"
        self._in_error = attrs.get("id") == "error"
        if self._in_rows and tag == "tr":
            self.rows.append([])
        if self._in_rows and tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        if tag == "tbody":
            self._in_rows = False
        self._in_error = False if tag == "p" else self._in_error

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_error:
            self.error += data


def _rendered(tmp_path, url: str) -> Rows:
    done = _browser(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = Rows()
    rows.feed(done.stdout)
    return rows


def test_page_lists_a_users_top10(page_server, tmp_path):
    client, served = page_server
    rec = served.rec
    user = min((u.id for u in rec.dataset.users), key=lambda u: len(rec.history(u)))  # >= 10 unseen items
    rows = _rendered(tmp_path, f"http://127.0.0.1:{client.port}/?user={user}")
    assert rows.error == "" and len(rows.rows) == 10
    top = rec.recommend(user, k=10)[0]
    titles = [rec.dataset.items[rec.dataset.item_index[i]].title for i, _ in top]
    assert [r[1] for r in rows.rows] == titles
    ratings = rec.rate(user, [i for i, _ in top])
    likes = rec.prefer(user, [i for i, _ in top])
    assert [float(r[3]) for r in rows.rows] == pytest.approx(ratings, abs=0.006)
    assert [float(r[4]) for r in rows.rows] == pytest.approx(likes, abs=0.006)

    shot = tmp_path / "page.png"
    done = _browser(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1000,900",
        f"http://127.0.0.1:{client.port}/?user={user}",
    )
    assert (
        done.returncode == 0
        and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and shot.stat().st_size > 10_000
    )
    if os.environ.get("MTREC_SCREENSHOT_DIR"):  # keep it (CI artefacts, the README's picture)
        shutil.copy(shot, os.environ["MTREC_SCREENSHOT_DIR"])


def test_page_takes_a_new_users_titles_and_shows_errors(page_server, tmp_path):
    client, served = page_server
    rec = served.rec
    liked = [rec.dataset.items[rec.dataset.item_index[i]].title for i in ("5", "13")]
    rows = _rendered(tmp_path, f"http://127.0.0.1:{client.port}/?liked={'|'.join(liked)}")
    assert [r[1] for r in rows.rows] == [
        rec.dataset.items[rec.dataset.item_index[i]].title
        for i, _ in rec.recommend_for_history(["5", "13"], k=10)
    ]
    rows = _rendered(tmp_path, f"http://127.0.0.1:{client.port}/?user=nobody")
    assert rows.rows == [] and "unknown user id 'nobody'" in rows.error
