"""English sentences for calibrating and checking sentence embeddings, with no download.

Calibration and held-out sets are harvested deterministically from the standard library's
docstrings (prose only); a hand-written topical set checks that nearest-neighbour ranking
survives quantization.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import subprocess
import sys
import warnings

STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email", "email.message", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "json", "logging", "logging.handlers", "lzma",
    "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "profile", "pstats", "pydoc", "queue", "quopri", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "subprocess", "sysconfig",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "typing", "unittest", "unittest.mock", "urllib.parse", "urllib.request", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
    "zipimport",
)  # fmt: skip
MIN_WORDS, MAX_WORDS = 5, 40
N_CALIB_POOL = 400
N_HELD_OUT = 300
SHUFFLE_SEED = 1234

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'\-]*[,.;:!?]?$")


def _docstrings(module_name: str) -> list[str]:
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # optional GUI/OS modules may not import
        return []
    docs = [mod.__doc__ or ""]
    for name in sorted(vars(mod)):
        obj = getattr(mod, name, None)
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        docs.append(getattr(obj, "__doc__", None) or "")
        if isinstance(obj, type):
            for attr in sorted(vars(obj)):
                docs.append(getattr(vars(obj)[attr], "__doc__", None) or "")
    return [d for d in docs if isinstance(d, str)]


def _clean_sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        for sent in _SENT_SPLIT.split(flat):
            words = sent.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS or not sent.endswith("."):
                continue
            if sum(bool(_WORD.match(w)) for w in words) < 0.85 * len(words):
                continue  # mostly prose, not code
            out.append(sent)
    return out


def harvest() -> list[str]:
    """Every prose sentence in the listed modules' docstrings, sorted."""
    pool: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # typing.io and friends warn on access
        for name in STDLIB_MODULES:
            for doc in _docstrings(name):
                pool.update(_clean_sentences(doc))
    return sorted(pool)


def load_sentences() -> tuple[list[str], list[str]]:
    """(calibration, held_out): disjoint, deterministic English sentences from stdlib docstrings.

    The harvest runs in a fresh interpreter without site-packages (-I -S): what a module
    exposes depends on what else was imported, and the build imports torch and friends.
    """
    result = subprocess.run(
        [sys.executable, "-I", "-S", __file__], capture_output=True, check=True, text=True
    )
    sentences: list[str] = json.loads(result.stdout)
    random.Random(SHUFFLE_SEED).shuffle(sentences)
    if len(sentences) < N_CALIB_POOL + N_HELD_OUT:
        raise RuntimeError(f"only {len(sentences)} sentences harvested")
    return sentences[:N_CALIB_POOL], sentences[N_CALIB_POOL : N_CALIB_POOL + N_HELD_OUT]


# Hand-written ranking set: 10 topics x 5 sentences (written for this experiment).
RANKING_SENTENCES: tuple[str, ...] = (
    # cooking
    "Simmer the tomato sauce for twenty minutes before adding the basil.",
    "Add fresh basil to the tomato sauce after it has simmered for a while.",
    "Knead the bread dough until it is smooth and elastic.",
    "The pasta should be boiled in salted water until al dente.",
    "Preheat the oven to two hundred degrees before baking the cake.",
    # football
    "The striker scored twice in the second half to win the match.",
    "Two second-half goals from the forward secured the victory.",
    "The goalkeeper saved a penalty in the final minute.",
    "The referee showed a red card to the defender after a harsh tackle.",
    "Fans filled the stadium to watch the championship final.",
    # weather
    "Heavy rain is expected across the north of the country tomorrow.",
    "Forecasters predict a lot of rainfall in northern regions tomorrow.",
    "A heatwave pushed temperatures above forty degrees this week.",
    "Strong winds knocked down trees and power lines overnight.",
    "Snow will make the mountain roads dangerous this weekend.",
    # programming
    "The function returns None when the list is empty.",
    "If the input list has no elements, the function gives back None.",
    "Use a dictionary to look up values by key in constant time.",
    "The compiler reported a syntax error on line twelve.",
    "Unit tests help catch regressions before the code is released.",
    # finance
    "The central bank raised interest rates by half a percentage point.",
    "Borrowing costs went up after the central bank increased its key rate.",
    "Stock markets fell sharply after the disappointing earnings report.",
    "She opened a savings account to put money aside every month.",
    "Inflation reduced the purchasing power of household incomes.",
    # medicine
    "The doctor prescribed antibiotics for the bacterial infection.",
    "Antibiotics were given by the physician to treat the infection.",
    "Regular exercise lowers the risk of heart disease.",
    "The patient was admitted to hospital with a broken leg.",
    "Vaccines train the immune system to recognise a virus.",
    # travel
    "Our flight to Lisbon was delayed by three hours.",
    "The plane to Lisbon left three hours later than scheduled.",
    "We booked a small hotel near the old town square.",
    "The train crosses the mountains on its way to the coast.",
    "Remember to bring your passport to the airport.",
    # animals
    "The cat slept on the warm windowsill all afternoon.",
    "All afternoon the kitten dozed in the sunny window.",
    "Wolves hunt in packs across the northern forests.",
    "The dog barked loudly at the delivery driver.",
    "Bees collect nectar from flowers to make honey.",
    # music
    "The orchestra performed a symphony by Beethoven last night.",
    "Last evening the symphony orchestra played Beethoven.",
    "He practises the guitar for an hour every day.",
    "The band released their new album on Friday.",
    "She sang the lead role in the opera.",
    # space
    "The rover collected rock samples from the surface of Mars.",
    "Samples of Martian rock were gathered by the robotic vehicle.",
    "The telescope captured images of a distant galaxy.",
    "Astronauts spent six months aboard the space station.",
    "The rocket launch was postponed because of bad weather.",
)


RANKING_GROUPS: tuple[int, ...] = tuple(i // 5 for i in range(len(RANKING_SENTENCES)))


if __name__ == "__main__":  # the isolated harvest that load_sentences() runs
    print(json.dumps(harvest()))
