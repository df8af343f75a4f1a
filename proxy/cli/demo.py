"""``tokenproxy demo``: the story on sample data, with a throwaway keyring.

Shows what an insider would see (tokens), that every token goes back to its value under
the proxy's keys, that a rotation changes tokens while old ones still resolve, and that a
retired key ends them. Everything lives in a temporary directory removed at the end.
Each step is checked; the command exits non-zero if one did not hold.
"""

from __future__ import annotations

import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from proxy import keystore
from proxy.crypto.engine import TokenEngine
from proxy.crypto.keyring import Keyring
from proxy.crypto.registry import MemoryRegistry
from proxy.crypto.vault import MemoryVault
from proxy.errors import NotATokenError

CUSTOMERS = [
    ("Budi Santoso", "+62 812-3456-789", "Budi asked to be called back on 0812 3456 789."),
    ("Siti Nurhaliza", "0857 1122 3344", "Siti prefers WhatsApp: +62 857-1122-3344."),
    ("José García-Márquez", "+34 612 345 678", "Spoke with José about the refund."),
    ("Zoë O'Brien", "+44 20 7946 0958", "Zoë's number +44 20 7946 0958 is the office."),
    ("Иван Петров", "+7 912 345-67-89", "Иван called twice."),
    ("王小明", "+86 138 0013 8000", "王小明 asked for an invoice."),
    ("Li", "+65 9123 4567", "Li called from +65 9123 4567 at 10:30."),
]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(_width(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  " + "  ".join(_pad(cell, w) for cell, w in zip(row, widths, strict=True)))


class Story:
    """The checks of the demo: each prints a line and remembers whether it held."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, what: str, held: bool) -> None:
        click.echo(f"  [{'ok' if held else 'FAILED'}] {what}")
        if not held:
            self.failed.append(what)


def _engine(keyring: Keyring, vault: MemoryVault, registry: MemoryRegistry) -> TokenEngine:
    return TokenEngine.standard(keyring, vault, registry, default_region="ID")


def run_story(workdir: Path) -> Story:
    """Walk through tokenization, resolution and rotation; return what held."""
    story = Story()
    kek = keystore.generate_kek()
    keys_dir = workdir / "keys"
    keystore.init_keyring(keys_dir, kek)
    vault, registry = MemoryVault(), MemoryRegistry()
    engine = _engine(keystore.load_keyring(keys_dir, kek), vault, registry)

    click.echo("\n1. What a support tool receives through tokenproxy (no ticket):\n")
    rows = [("NAME", "TOKEN", "PHONE", "TOKEN")]
    tokens = []
    for name, phone, note in CUSTOMERS:
        t_name, t_phone = engine.tokenize("name", name), engine.tokenize("phone", phone)
        t_note = engine.tokenize_text(note, known_names=[name])
        tokens.append((t_name, t_phone, t_note))
        rows.append((name, t_name, phone, t_phone))
    _table(rows)
    click.echo("\n   and a note that mentions the customer:\n")
    _table([("NOTE", CUSTOMERS[0][2]), ("TOKENIZED", tokens[0][2])])
    click.echo()
    story.check(
        "every token has its value's length, and no name or phone passes raw",
        all(
            len(t) == len(v) and t != v
            for (name, phone, _), (tn, tp, _) in zip(CUSTOMERS, tokens, strict=True)
            for v, t in ((name, tn), (phone, tp))
        ),
    )
    story.check(
        "no note still holds its customer's name or phone",
        all(
            name not in tn and phone not in tn
            for (name, phone, _), (_, _, tn) in zip(CUSTOMERS, tokens, strict=True)
        ),
    )
    story.check(
        "the same value gives the same token (look-ups and joins keep working)",
        engine.tokenize("name", "Budi Santoso") == tokens[0][0],
    )

    click.echo("\n2. Tokens coming back (a search, a saved record) resolve to the real values:\n")
    back = [
        (engine.detokenize("name", tn), engine.detokenize("phone", tp)) for tn, tp, _ in tokens
    ]
    story.check(
        "every token resolves to its value",
        back == [(name, phone) for name, phone, _ in CUSTOMERS],
    )
    typed = engine.resolve("name", "Agus Salim")
    story.check(
        "a value that is not a token passes as typed",
        typed.value == "Agus Salim" and not typed.was_token,
    )

    click.echo("\n3. Key rotation: new tokens from now on, old tokens still resolve:\n")
    change = keystore.rotate_keys(keys_dir, kek)
    engine = engine.with_keyring(change.keyring)
    rotated = engine.tokenize("name", "Budi Santoso")
    _table([("Budi Santoso", f"v1 {tokens[0][0]}", f"v{change.created} {rotated}")])
    click.echo()
    story.check("the new key makes a new token", rotated != tokens[0][0])
    story.check(
        "the old token still resolves", engine.detokenize("name", tokens[0][0]) == "Budi Santoso"
    )

    click.echo("\n4. Retiring the old key ends its tokens:\n")
    retired = keystore.retire_key(keys_dir, kek, 1)
    engine = engine.with_keyring(retired.keyring)
    story.check(
        "a v1 token no longer resolves",
        _refused(lambda: engine.detokenize("name", tokens[0][0])),
    )
    story.check(
        "a v2 token still does", engine.detokenize("name", rotated) == "Budi Santoso"
    )
    return story


def _refused(action: Callable[[], object]) -> bool:
    try:
        action()
    except NotATokenError:
        return True
    return False


@click.command()
@click.option("--once", is_flag=True, help="Run the story and exit (non-zero if a step failed).")
def demo(once: bool) -> None:
    """Show tokenproxy on sample customers: tokens, resolution, rotation, retirement."""
    click.echo("tokenproxy demo: a throwaway keyring in a temporary directory")
    with tempfile.TemporaryDirectory(prefix="tokenproxy-demo-") as tmp:
        story = run_story(Path(tmp))
    if story.failed:
        raise click.ClickException(f"{len(story.failed)} step(s) did not hold")
    click.echo("\nevery step held.")
    if not once:
        click.echo(
            "next: `tokenproxy keys init` for a real keyring, then "
            "`tokenproxy tokenize --kind name` (see README.md)"
        )
