"""The console is served by the cloud itself: static files at /console/, the bare host redirected there."""

from __future__ import annotations

import re

import httpx

from cloud.app import create_app
from cloud.console import STATIC_DIR
from cloud.settings import CloudSettings


def client() -> httpx.AsyncClient:
    app = create_app(CloudSettings(database_url="sqlite+aiosqlite:///:memory:"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test")


async def test_root_redirects_to_the_console() -> None:
    async with client() as http:
        r = await http.get("/")
        assert r.status_code == 307
        assert r.headers["location"] == "/console/"


async def test_index_and_every_module_it_imports_are_served() -> None:
    async with client() as http:
        index = await http.get("/console/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="js/app.js">' in index.text
        assert (await http.get("/console/console.css")).status_code == 200
        # Every module file, and every relative import inside one, resolves (no build step to catch it).
        for path in sorted(STATIC_DIR.rglob("*.js")):
            rel = path.relative_to(STATIC_DIR).as_posix()
            r = await http.get(f"/console/{rel}")
            assert r.status_code == 200, rel
            assert "javascript" in r.headers["content-type"], rel
            for target in re.findall(r'from "(\.[^"]+)"', r.text):
                assert (path.parent / target).resolve().is_file(), f"{rel} imports missing {target}"


async def test_labels_exist_in_both_languages() -> None:
    text = (STATIC_DIR / "js" / "i18n.js").read_text(encoding="utf-8")
    en = text[text.index("  en: {") : text.index("  zh: {")]
    zh = text[text.index("  zh: {") : text.index("// Event types in words")]
    keys = re.compile(r'^\s+"([\w.]+)":', re.M)
    assert set(keys.findall(en)) == set(keys.findall(zh))
    words = ["道闸", "门禁", "开闸", "开门", "可视对讲", "工单", "紧急", "确认"]
    for word in [*words, "派单", "处理中", "超时", "回访", "已解决", "已关闭"]:
        assert word in zh, word
