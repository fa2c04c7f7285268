"""`lstmkit serve` as a real server on loopback: a subprocess on a free port, real HTTP."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lstmkit
from tiny_runs import save_tiny_run

httpx = pytest.importorskip("httpx", reason="httpx absent: pip install 'lstmkit[test]'")
pytest.importorskip("fastapi", reason="fastapi absent: pip install 'lstmkit[serve]'")
pytest.importorskip("uvicorn", reason="uvicorn absent: pip install 'lstmkit[serve]'")

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lstmkit", "serve", "--model", str(run), "--port", str(port)],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not come up")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = save_tiny_run(tmp_path_factory.mktemp("serve") / "word", "word", eos_bias=0.5)
    process, url = start_server(run)
    yield {"url": url, "run": lstmkit.load(run), "process": process}
    if process.poll() is None:
        process.kill()
        process.wait()


def stream_sample(url: str, body: dict) -> tuple[list[dict], str]:
    """The sample's pieces as they arrive, and the content type; the stream must end with
    the `end` event."""
    events, ended = [], False
    with httpx.stream("POST", f"{url}/sample", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            ended = ended or line == "event: end"
            if line.startswith("data: ") and not ended:
                events.append(json.loads(line[6:]))
        assert ended
        return events, response.headers["content-type"]


def test_every_call_on_the_model_thread_shares_one_kept_block():
    """The served weights never change: every call, and each sample's generator inside it,
    shares one set of kept weights, however many streams are open."""
    from lstmkit.lm.serve import ModelThread
    from lstmkit.nn.kept import _KEPT, kept_weights_context

    model_thread = ModelThread()

    async def calls() -> list:
        return [await model_thread.call(_KEPT.get),
                await model_thread.call(lambda: kept_weights_context().run(_KEPT.get))]

    first, in_a_generator = asyncio.run(calls())
    assert first is not None and in_a_generator is first
    assert _KEPT.get() is None, "not outside the model thread's calls"


def test_health_names_the_model(server):
    health = httpx.get(f"{server['url']}/health").json()
    assert health["status"] == "ok" and health["level"] == "word" and health["cell"] == "lstm"


def test_sample_streams_the_same_text_as_the_api(server):
    body = {"prime": "the cat", "length": 30, "temperature": 0.9, "top_p": 0.9, "seed": 5}
    events, content_type = stream_sample(server["url"], body)
    assert content_type.startswith("text/event-stream")
    assert len(events) == 2 + 30, "one event per piece: the prime's two words, then each token"
    text = "".join(e["text"] for e in events)
    expected = server["run"].sample("the cat", 30, 0.9, top_p=0.9, seed=5)
    assert text == expected


def test_two_clients_at_once_each_get_their_own_sample(server):
    results = {}

    def client(seed: int) -> None:
        events, _ = stream_sample(server["url"], {"length": 80, "seed": seed, "num_samples": 2})
        results[seed] = ["".join(e["text"] for e in events if e.get("sample") == i)
                         for i in range(2)]

    threads = [threading.Thread(target=client, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for seed in (1, 2):
        assert results[seed] == server["run"].sample(length=80, seed=seed, num_samples=2)


def test_score_gives_each_lines_log_probability(server):
    text = "the cat sees a dog\na dog likes bread\n"
    response = httpx.post(f"{server['url']}/score", json={"text": text})
    assert response.status_code == 200
    got, expected = response.json(), server["run"].score(text, per_line=True).to_dict()
    assert [line["tokens"] for line in got["lines"]] == [5, 5]
    assert got["logprob_nats"] == pytest.approx(expected["logprob_nats"], abs=1e-9)
    assert sum(line["logprob_nats"] for line in got["lines"]) == pytest.approx(
        got["logprob_nats"])


@pytest.mark.parametrize("path, body, status, reason", [
    ("/sample", {"length": 10**6}, 422, "length: 1000000 tokens, the limit is 2000"),
    ("/sample", {"num_samples": 1000}, 422, "num_samples"),
    ("/sample", {"top_p": 0}, 422, "top_p"),
    ("/sample", {"temperature": -1}, 422, "temperature"),
    ("/sample", {"prime": "x" * 10_000}, 422, "prime"),
    ("/sample", {"path": "/etc/passwd"}, 422, "path: Extra inputs are not permitted"),
    ("/score", {"text": ""}, 400, "too few to score"),
    ("/score", {"text": "x" * 300_000}, 413, "the limit is"),
    ("/score", {"text": "y" * 2_000_000}, 413, "request body over"),
    ("/score", "not json", 422, "body"),
])
def test_bad_requests_get_a_4xx_with_a_one_line_reason(server, path, body, status, reason):
    if isinstance(body, str):
        response = httpx.post(f"{server['url']}{path}", content=body)
    else:
        response = httpx.post(f"{server['url']}{path}", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert reason in error and "\n" not in error


def test_a_chunked_body_over_the_limit_gets_413_and_unknown_paths_one_line(server):
    chunks = (b"y" * 100_000 for _ in range(20))  # 2 MB without a Content-Length
    response = httpx.post(server["url"] + "/score", content=chunks,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "request body over" in response.json()["error"]
    small = (part for part in (b'{"text": "the cat ', b'sees a dog"}'))  # chunked, in limits
    response = httpx.post(server["url"] + "/score", content=small,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["tokens"] > 0
    assert httpx.get(server["url"] + "/nowhere").json() == {"error": "Not Found"}
    wrong_method = httpx.get(server["url"] + "/score")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "Method Not Allowed"}


def test_the_page_is_one_self_contained_file(server):
    response = httpx.get(server["url"] + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/html")
    page = response.text
    assert "<script>" in page and "/sample" in page and "/score" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_the_server_shuts_down_on_interrupt(server):  # last: it stops the module's server
    process, url = server["process"], server["url"]
    assert httpx.get(f"{url}/health").status_code == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_the_page_samples_and_scores_in_headless_chromium(tmp_path):
    sync_playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright absent: pip install playwright").sync_playwright
    process, url = start_server(save_tiny_run(tmp_path / "char", "char", "lstm", hidden=24))
    address = (f"{url}/?prime=ROMEO:&length=300&temperature=0.8&seed=2&run=1"
               "&text=ROMEO: the hat%0AMEE: as one sees%0AOE: so neat%0A")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 640})
            page.goto(address)
            # The page runs both forms from the address; wait for the whole stream.
            page.wait_for_function("document.getElementById('output').textContent.length"
                                   " >= 306 && !document.getElementById('sample').disabled",
                                   timeout=60_000)
            page.wait_for_selector("#lines tr >> nth=3", timeout=60_000)
            assert page.text_content("#output").startswith("ROMEO:")
            assert "tokens scored" in page.text_content("#total")
            screenshot = REPO / "docs" / "serve.png"
            screenshot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot))
            browser.close()
        assert screenshot.stat().st_size > 10_000
    finally:
        process.kill()
        process.wait()
