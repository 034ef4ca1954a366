"""Every curl example in README.md runs against the live server and gets an HTTP status < 400."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

# EDGE_TEST_README lets a draft README be checked before it replaces the real one.
README = Path(os.environ.get("EDGE_TEST_README", Path(__file__).parents[2] / "README.md"))
README_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(?:sh|bash|shell|console)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
MODELS_PATH = re.compile(r"(?<![\w/.-])models/")  # a relative path, never the URL's /v2/models/


def curl_commands(markdown: str) -> list[str]:
    """The curl commands in the shell code blocks, with `\\`-continued lines joined."""
    commands = []
    for block in FENCE.findall(markdown):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("curl "):
                commands.append(line)
    return commands


def has_fail_flag(args: list[str]) -> bool:
    """-f, --fail, --fail-with-body, or -f inside a short-flag bundle such as -sSf."""
    return any(
        arg.startswith("--fail") or re.fullmatch(r"-[A-Za-z]*f[A-Za-z]*", arg) for arg in args
    )


def runnable(command: str, url: str, repository: Path) -> list[str]:
    """argv for the command against the test server: curl part only, -sf, status written last."""
    command = MODELS_PATH.sub(f"{repository}/", command.replace(README_URL, url))
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    tokens = list(lexer)
    args = tokens[: tokens.index("|")] if "|" in tokens else tokens
    if not has_fail_flag(args):
        args.insert(1, "-sf")
    return [*args, "--write-out", "\nHTTP %{http_code}\n"]


COMMANDS = curl_commands(README.read_text()) if README.is_file() else []


def command_id(command: str) -> str:
    """A short test id: the method and the URL path the example calls."""
    path = re.search(r"https?://[^/\s'\"]+(/[^\s'\"?]*)", command)
    method = re.search(r"(?:-X|--request)\s+(\w+)", command)
    post = (
        method.group(1)
        if method
        else ("POST" if re.search(r"\s(-d|-F|--data)", command) else "GET")
    )
    return f"{post} {path.group(1) if path else command[:40]}"


def test_readme_has_curl_examples() -> None:
    """The README shows users how to call the service."""
    if not README.is_file():
        pytest.skip(f"{README} is not written yet")
    assert COMMANDS, f"no curl commands in the shell code blocks of {README}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", COMMANDS, ids=[command_id(c) for c in COMMANDS])
def test_readme_curl_example_works(
    command: str, live_server: Any, model_repository: Path, tmp_path: Path
) -> None:
    """A user pasting the example gets a success, not an error page."""
    model = re.search(r"/(?:tasks|v2/models)/([\w.-]+)/", command)
    if model and not (model_repository / model.group(1)).is_dir():
        pytest.skip(f"model '{model.group(1)}' is not built for these tests (only digits)")
    argv = runnable(command, live_server.url, model_repository)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0, f"{shlex.join(argv)}\nexit {done.returncode}\n{done.stderr}"
    status = int(done.stdout.rstrip().rsplit("HTTP ", 1)[-1])
    assert status < 400, done.stdout


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("```sh\ncurl -s http://127.0.0.1:8000/v2\n```\n", ["curl -s http://127.0.0.1:8000/v2"]),
        (
            "```sh\ncurl -X POST \\\n  -d @a.json \\\n  x\n```\n",
            ["curl -X POST    -d @a.json    x"],
        ),
        ("```python\ncurl x\n```\n```sh\nmake serve\n$ curl y\n```\n", ["curl y"]),
    ],
    ids=["one-line", "continued", "only-sh-curl"],
)
def test_curl_commands_are_extracted(markdown: str, expected: list[str]) -> None:
    """The extractor sees what a reader would copy."""
    assert curl_commands(markdown) == expected


def test_runnable_rewrites_url_and_model_paths(tmp_path: Path) -> None:
    """The URL and the sample paths point at the test server and repository; -sf is added."""
    argv = runnable(
        "curl -F image=@models/digits/samples/a.png "
        "'http://127.0.0.1:8000/tasks/digits/classify?precision=int8&top_k=3' | jq .",
        "http://127.0.0.1:9999",
        tmp_path,
    )
    assert argv[:4] == [
        "curl",
        "-sf",
        "-F",
        f"image=@{tmp_path}/digits/samples/a.png",
    ]
    assert argv[4] == "http://127.0.0.1:9999/tasks/digits/classify?precision=int8&top_k=3"
    assert "jq" not in argv
    assert runnable("curl -fsS http://127.0.0.1:8000/v2/models/digits", "u", tmp_path)[1] == "-fsS"
