"""What the other tools read back (issue 12, items 3-6): the infotext and the prompts we
write for A1111, ComfyUI, InvokeAI and diffusers are read by those tools as we meant them.

Each tool's reading rule is encoded here, in our own test code, from the tool's public
source (named in each helper's docstring): A1111's infotext parser and prompt matcher,
ComfyUI's ``embedding:`` words, InvokeAI's trigger pattern, diffusers' added tokens.
The prompts, files and infotext conceptlib writes are fed to these readers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import regex
from click.testing import CliRunner

from conceptlib.compose.compose import compose, format_prompts, parse_infotext
from conceptlib.compose.export import export_for_prompt
from conceptlib.compose.formats import render_prompts, ui_file_stem, ui_trigger
from conceptlib.compose.prompt import parse_prompt
from conceptlib.compose.resolve import resolve_prompt
from conceptlib.errors import UntriggerableName
from conceptlib.models.checkpoint_hash import (
    CACHE_NAME,
    a1111_model_hash,
    checkpoint_file,
    checkpoint_sha256,
)
from conceptlib.registry.formats import read_embedding_bytes
from conceptlib.registry.samples import sample_embedding

FAST = {"steps": 2, "guidance": 5.0, "width": 32, "height": 32}


# --------------------------------------------------------------------------- the readers


def a1111_read_infotext(text: str) -> dict[str, str]:
    """Infotext as AUTOMATIC1111 stable-diffusion-webui v1.10 reads it
    (``modules/infotext_utils.py``, ``parse_generation_parameters``).

    The rule: the text is stripped and split into lines; the last line holds the
    parameters only if at least 3 ``Key: value`` pairs are found in it (a key is a word
    character followed by word characters, spaces, ``-`` or ``/``; a value is a
    double-quoted JSON string or runs to the next comma), else it is prompt text. Every
    other line is stripped; from a line starting with ``Negative prompt:`` (that prefix
    removed) on, lines are the negative prompt, before it the prompt (lines joined by
    newlines). Quoted values are read with ``json.loads``; a ``WxH`` value becomes
    ``Key-1`` and ``Key-2``.
    """
    pair = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    *lines, last = text.strip().split("\n")
    if len(pair.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pair.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.groups()
        else:
            out[key] = value
    return out


def a1111_chunks(prompt: str) -> list[tuple[str, float]]:
    """A prompt split into ``(text, weight)`` runs as A1111 v1.10 does before tokenizing
    (``modules/prompt_parser.py``, ``parse_prompt_attention``).

    The rule: ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters;
    ``(`` ... ``)`` multiplies the weight inside by 1.1, ``[`` ... ``]`` divides it by
    1.1, and ``(`` ... ``:w)`` (``w`` matching ``[+-]?[.\\d]+``) multiplies it by ``w``
    instead; unclosed brackets apply to the end; a ``:`` elsewhere is text. Runs of equal
    weight are merged, and each run is tokenized on its own.
    """
    out: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in out[start:]:
            item[1] *= factor

    pattern = r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:"
    for m in re.finditer(pattern, prompt):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            out.append([tok[-1], 1.0])
        elif tok == "(":
            rounds.append(len(out))
        elif tok == "[":
            squares.append(len(out))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif tok == ")" and rounds:
            scale(rounds.pop(), 1.1)
        elif tok == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
        else:
            out.append([tok, 1.0])
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    merged: list[list] = []
    for text, weight in out:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(t, w) for t, w in merged]


def clip_pretokens(text: str) -> list[str]:
    """CLIP's pre-tokenization (OpenAI CLIP ``simple_tokenizer``, transformers'
    ``CLIPTokenizer``): lower case, then contractions, letter runs, single digits and
    runs of other non-space characters; BPE then encodes each run on its own."""
    return regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", text.lower())


def a1111_applied(prompt: str, folder: Path) -> dict[str, float]:
    """The embedding files A1111 v1.10 applies for ``prompt`` from ``folder``, with the
    weight of the run each is found in (``modules/textual_inversion/textual_inversion.py``:
    an embedding is named by its file's stem, tokenized on its own, and found where its
    token ids occur in a run's token ids; ``modules/extra_networks.py``: ``<word:...>``
    is an extra network and is cut out of the prompt first; ``modules/prompt_parser.py``:
    ``AND`` splits the prompt and ``BREAK`` starts a new chunk)."""
    prompt = re.sub(r"<(\w+):([^>]+)>", "", prompt)
    assert not re.search(r"\bAND\b|\bBREAK\b", prompt), prompt
    found: dict[str, float] = {}
    runs = [(clip_pretokens(text), w) for text, w in a1111_chunks(prompt)]
    for path in sorted(folder.iterdir()):
        want = clip_pretokens(path.stem)
        for toks, weight in runs:
            if any(toks[i : i + len(want)] == want for i in range(len(toks) - len(want) + 1)):
                found[path.name] = weight
    return found


def comfyui_applied(prompt: str, folder: Path) -> list[str]:
    """The embedding files ComfyUI loads for ``prompt`` from ``models/embeddings`` =
    ``folder`` (``comfy/sd1_clip.py``: ``escape_important``, ``token_weights``,
    ``SDTokenizer.tokenize_with_weights``, ``load_embed``).

    The rule: ``\\(`` / ``\\)`` are literal; the prompt is cut into parenthesized groups
    (a trailing ``:number`` inside a group is its weight); each segment is split on
    spaces and newlines; a word starting with ``embedding:`` names a file (as given, or
    with ``.safetensors``, ``.pt``, ``.bin`` appended); if none is found, trailing
    commas are stripped and the lookup tried again.
    """
    text = prompt.replace("\\)", "\0\1").replace("\\(", "\0\2")

    def segments(s: str) -> list[str]:
        out, cur, depth = [], "", 0
        for ch in s:
            if ch == "(":
                if depth == 0 and cur:
                    out.append(cur)
                    cur = ""
                cur += ch
                depth += 1
            elif ch == ")" and depth:
                depth -= 1
                cur += ch
                if depth == 0:
                    out.append(cur)
                    cur = ""
            else:
                cur += ch
        if cur:
            out.append(cur)
        result = []
        for seg in out:
            if len(seg) >= 2 and seg[0] == "(" and seg[-1] == ")":
                inner = seg[1:-1]
                colon = inner.rfind(":")
                if colon > 0:
                    try:
                        float(inner[colon + 1 :])
                        inner = inner[:colon]
                    except ValueError:
                        pass
                result += segments(inner)
            else:
                result.append(seg)
        return result

    def lookup(name: str) -> Path | None:
        for candidate in (name, *(name + ext for ext in (".safetensors", ".pt", ".bin"))):
            if (folder / candidate).is_file():
                return folder / candidate
        return None

    found = []
    for seg in segments(text):
        seg = seg.replace("\0\1", ")").replace("\0\2", "(")
        for word in [w for w in seg.replace("\n", " ").split(" ") if w]:
            if not word.startswith("embedding:"):
                continue
            name = word[len("embedding:") :]
            hit = lookup(name) or (lookup(name.strip(",")) if name.strip(",") != name else None)
            if hit is not None:
                found.append(hit.name)
    return found


def invokeai_applied(prompt: str, folder: Path) -> list[str]:
    """The embedding files InvokeAI applies for ``prompt`` (``invokeai/app/util/ti_utils.py``:
    triggers are the matches of ``<[a-zA-Z0-9., _-]+>``, each looked up as a model name;
    a file installed from the folder is named after its stem)."""
    models = {p.stem: p.name for p in folder.iterdir()}
    return [
        models[t[1:-1]] for t in re.findall(r"<[a-zA-Z0-9., _-]+>", prompt) if t[1:-1] in models
    ]


def diffusers_applied(prompt: str, folder: Path) -> list[str]:
    """The folders diffusers' ``load_textual_inversion`` applies for ``prompt``: each file
    is keyed by its token, added to the tokenizer and matched anywhere in the prompt."""
    from safetensors.numpy import load_file

    found = []
    for sub in sorted(folder.iterdir()):
        (token,) = load_file(str(sub / "learned_embeds.safetensors")).keys()
        if token in prompt:
            found.append(sub.name)
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def odd_names(lib):
    """Entries whose names each UI reads differently; all SD 1.x."""
    specs = [
        ("cat-toy", "<cat-toy>"),
        ("cat-toy@v1", "<cat-toy@v1>"),  # what pull keeps an older version as
        ("café", None),
        ("a+b", None),
        ("end-", None),
        ("_under", None),
        ("style-AND-x", None),
        ("ukiyoe", None),
    ]
    for seed, (name, token) in enumerate(specs, start=10):
        lib.add_embedding(sample_embedding("sd1", 2, seed), name=name, token=token)
    return lib


ODD_PROMPT = (
    "a <cat-toy><cat-toy@v1>, <café:0.8>(<a+b:1.2>) <end->, x<_under>.<style-AND-x> "
    "<ukiyoe:0.00001>"
)
ODD_ALL = ["cat-toy", "cat-toy@v1", "café", "a+b", "end-", "_under", "style-AND-x", "ukiyoe"]


def _owner(lib, path: Path) -> str:
    """The catalog name whose vectors ``path`` holds."""
    sha = read_embedding_bytes(path.read_bytes(), path=str(path)).embedding.tensor_sha256
    (info,) = [i for i in lib.list() if i.tensor_sha256 == sha]
    return info.name


# --------------------------------------------------------------------------- item 6: names


@pytest.mark.parametrize("fmt", ["a1111", "comfyui", "invokeai", "diffusers"])
def test_each_ui_applies_every_embedding_the_prompt_names(odd_names, tmp_path, fmt):
    """The prompt ``compose --format F`` prints and the files ``export --for-prompt
    --format F`` writes make UI F apply every embedding named, each from its own file
    (``<cat-toy@v1>`` used to be printed for InvokeAI, whose trigger pattern has no
    ``@``; ``<a><b>`` used to print ``ab`` for A1111; ``x<name>`` ``xembedding:name``
    for ComfyUI)."""
    folder = tmp_path / fmt
    export_for_prompt(odd_names, ODD_PROMPT, fmt, folder)
    rendered = format_prompts(odd_names, ODD_PROMPT, None, fmt)
    if fmt == "a1111":
        found = a1111_applied(rendered.prompt, folder)
        owners = {_owner(odd_names, folder / f): w for f, w in found.items()}
        assert sorted(owners) == sorted(ODD_ALL)
        assert owners["café"] == pytest.approx(0.8)
        assert owners["a+b"] == pytest.approx(1.2 * 1.1)  # the prompt's own ( ) are attention
        assert owners["ukiyoe"] == pytest.approx(0.00001)  # not "1e-05", which A1111 misreads
        assert owners["cat-toy"] == 1.0
    elif fmt == "comfyui":
        found = comfyui_applied(rendered.prompt, folder)
        assert sorted(_owner(odd_names, folder / f) for f in found) == sorted(ODD_ALL)
    elif fmt == "invokeai":
        found = invokeai_applied(rendered.prompt, folder)
        assert sorted(_owner(odd_names, folder / f) for f in found) == sorted(ODD_ALL)
        assert "cat-toy-v1.safetensors" in found and "cafe.safetensors" in found
        assert rendered.triggers["cat-toy@v1"] == "cat-toy-v1"
    else:
        found = diffusers_applied(rendered.prompt, folder)
        assert sorted(found) == sorted(ODD_ALL)
    # every file written is one the UI applies: the names agree
    assert len(found) == len(list(folder.iterdir())) == len(ODD_ALL)


def test_one_function_per_ui_names_both_the_file_and_the_trigger(odd_names):
    info = odd_names.get("cat-toy@v1")
    assert ui_trigger("invokeai", info) == ui_file_stem("invokeai", info) == "cat-toy-v1"
    assert ui_trigger("a1111", info) == ui_file_stem("a1111", info) == "cat-toy@v1"
    assert ui_trigger("comfyui", info) == ui_file_stem("comfyui", info) == "cat-toy@v1"
    assert ui_trigger("diffusers", info) == "<cat-toy@v1>"
    assert ui_file_stem("diffusers", info) == "cat-toy@v1"
    style = odd_names.get("style-AND-x")
    assert ui_trigger("a1111", style) == ui_file_stem("a1111", style) == "style-and-x"


def _cli():
    from conceptlib.cli.main import cli

    return cli


@pytest.mark.parametrize(
    "extra, prompt, fragment",
    [
        ([], "a <猫>", "InvokeAI cannot trigger '猫'"),
        (["x@1", "x+1"], "<x@1> and <x+1>", "as the same name 'x-1'"),
        (["cafe"], "<café> and <cafe>", "'cafe', which is the name of another entry"),
        (["a-v1"], "<a@v1>", "which is the name of another entry"),
    ],
)
def test_names_invokeai_cannot_trigger_are_refused(
    lib, tmp_path, catalog_snapshot, _isolated_home, extra, prompt, fragment
):
    """Nothing is printed or written for a name InvokeAI cannot trigger even mapped, or
    whose mapping another entry has: exit 2 with the reason, the catalog unchanged."""
    names = {"猫", "café", "a@v1", *extra}
    for seed, name in enumerate(sorted(names), start=30):
        lib.add_embedding(sample_embedding("sd1", 1, seed), name=name)
    before = catalog_snapshot(_isolated_home)
    out = tmp_path / "invoke"
    res = CliRunner().invoke(_cli(), ["compose", prompt, "--format", "invokeai"])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "hint: rename" in res.output
    assert res.stdout == ""
    args = ["export", "--for-prompt", prompt, "--format", "invokeai", "-o", str(out)]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 2, res.output
    assert fragment in res.output
    assert not out.exists()
    assert catalog_snapshot(_isolated_home) == before
    with pytest.raises(UntriggerableName):
        export_for_prompt(lib, prompt, "invokeai", out)
    assert not out.exists()
    # A1111 names every one of them by its file name
    a1111 = tmp_path / "a1111"
    export_for_prompt(lib, prompt, "a1111", a1111)
    assert len(a1111_applied(format_prompts(lib, prompt, None, "a1111").prompt, a1111)) == len(
        list(a1111.iterdir())
    )


# --------------------------------------------------------------------------- item 5: SDXL


@pytest.fixture
def mixed(lib):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(sample_embedding("sdxl", 2, 5), name="neon-xl")
    return lib


@pytest.mark.parametrize(
    "fmt, fragment",
    [
        ("a1111", "A1111 will not apply <cat-toy> on an sdxl model"),
        ("invokeai", "InvokeAI will not apply <cat-toy> on an sdxl model"),
        ("comfyui", "ComfyUI applies <cat-toy> (an sd1 embedding) only in part"),
        ("diffusers", "diffusers applies <cat-toy> (an sd1 embedding) only in part"),
    ],
)
def test_each_ui_says_what_it_does_with_sd1_on_sdxl(mixed, tmp_path, fmt, fragment):
    """``compose --format`` and ``export --for-prompt`` warn when the target UI will not
    (fully) apply an embedding: the family comes from --base, or from the prompt's
    SDXL embeddings."""
    runner = CliRunner()
    res = runner.invoke(_cli(), ["compose", "<cat-toy> <neon-xl>", "--format", fmt])
    assert res.exit_code == 0, res.output
    assert f"warning: {fragment}" in res.stderr
    assert "neon-xl>" not in res.stderr  # an SDXL embedding on SDXL: nothing to say
    res = runner.invoke(_cli(), ["compose", "<cat-toy>", "--format", fmt])
    assert res.exit_code == 0 and "warning" not in res.stderr  # no family: no guess
    res = runner.invoke(_cli(), ["compose", "<cat-toy>", "--format", fmt, "--base", "tiny-sdxl"])
    assert f"warning: {fragment}" in res.stderr
    res = runner.invoke(
        _cli(), ["compose", "<cat-toy>", "--format", fmt, "--base", "tiny-sdxl", "--json"]
    )
    assert any(fragment in w for w in json.loads(res.stdout)["warnings"])

    out = tmp_path / fmt
    args = ["export", "--for-prompt", "<cat-toy>", "--format", fmt, "-o", str(out)]
    res = runner.invoke(_cli(), [*args, "--base", "tiny-sdxl"])
    assert res.exit_code == 0, res.output
    assert f"warning: {fragment}" in res.stderr
    assert len(list(out.iterdir())) == 1  # written all the same: the UI may use another model
    res = runner.invoke(_cli(), [*args, "--base", "tiny-sd1", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["warnings"] == []


def test_export_base_goes_with_for_prompt(mixed, tmp_path, catalog_snapshot, _isolated_home):
    before = catalog_snapshot(_isolated_home)
    res = CliRunner().invoke(
        _cli(), ["export", "cat-toy", "--base", "tiny-sdxl", "-o", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--base" in res.output and "--for-prompt" in res.output
    assert not (tmp_path / "x").exists()
    assert catalog_snapshot(_isolated_home) == before


# --------------------------------------------------------------------------- item 4: Model hash


def test_checkpoint_hash_is_the_file_sha256_computed_once(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    cache = tmp_path / "cache"
    calls = []
    full = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert checkpoint_sha256(ckpt, cache, progress=lambda d, t: calls.append((d, t))) == full
    assert calls[-1] == (ckpt.stat().st_size, ckpt.stat().st_size) and len(calls) == 4
    assert json.loads((cache / CACHE_NAME).read_text())[str(ckpt.resolve())]["sha256"] == full
    calls.clear()
    assert a1111_model_hash(ckpt, cache, progress=lambda d, t: calls.append(d)) == full[:10]
    assert calls == []  # cached by path, size and mtime: not read again
    # the file changes: hashed again
    with open(ckpt, "ab") as fh:
        fh.write(b"x")
    new = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert checkpoint_sha256(ckpt, cache, progress=lambda d, t: calls.append(d)) == new
    assert calls
    # a damaged cache is ignored and rewritten; a forged entry with another mtime is not used
    (cache / CACHE_NAME).write_text("{not json")
    assert checkpoint_sha256(ckpt, cache) == new
    data = json.loads((cache / CACHE_NAME).read_text())
    data[str(ckpt.resolve())]["mtime_ns"] += 1
    data[str(ckpt.resolve())]["sha256"] = "0" * 64
    (cache / CACHE_NAME).write_text(json.dumps(data))
    assert checkpoint_sha256(ckpt, cache) == new


def test_only_a_single_file_checkpoint_has_a_model_hash(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    (tmp_path / "folder.safetensors").mkdir()
    assert checkpoint_file(str(ckpt)) == ckpt
    assert checkpoint_file(str(ckpt), is_tiny=True) is None
    assert checkpoint_file("tiny-sd1") is None
    assert checkpoint_file(tmp_path / "folder.safetensors") is None
    assert checkpoint_file(tmp_path / "missing.safetensors") is None
    ckpt_pickle = tmp_path / "m.ckpt"
    ckpt_pickle.write_bytes(b"x")
    assert checkpoint_file(ckpt_pickle) is None


# --------------------------------------------------------------------------- item 3: infotext


@pytest.fixture(scope="module")
def sd1():
    from compose_support import fresh_base

    return fresh_base("tiny-sd1")


@pytest.fixture
def named(lib):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(sample_embedding("sd1", 3, 2), name="ukiyoe", kind="style")
    lib.add_embedding(sample_embedding("sd1", 2, 3), name="hy-phen")
    lib.add_embedding(sample_embedding("sd1", 8, 4), name="easynegative", kind="negative")
    return lib


@pytest.mark.timeout(300)
def test_infotext_reads_in_a1111_as_meant(named, sd1, tmp_path, _isolated_home):
    """The ``parameters`` chunk holds the prompts in A1111's syntax (``<name:0.8>`` was
    read by A1111 as an extra network and dropped), no ``Model hash`` for a base that is
    not one file (it used to be our fingerprint), our fingerprint in its own field; for
    a single-file base, ``Model hash`` is A1111's hash of that file, computed once."""
    from ldm_layout import save_single_file
    from PIL import Image

    prompt = "a photo of <cat-toy> in <ukiyoe:0.8> style, <hy-phen>"
    negative = "<easynegative>, blurry"
    result = compose(
        prompt, negative, base=sd1, library=named, seed=5, out=tmp_path / "a.png", **FAST
    )
    image = Image.open(result.images[0])
    text = image.text["parameters"]
    a1111 = a1111_read_infotext(text)
    assert a1111["Prompt"] == "a photo of cat-toy in (ukiyoe:0.8) style, hy-phen"
    assert a1111["Negative prompt"] == "easynegative, blurry"
    assert (a1111["Steps"], a1111["Seed"], a1111["Size-1"], a1111["Size-2"]) == (
        "2",
        "5",
        "32",
        "32",
    )
    assert a1111["Sampler"] == "DDIM" and a1111["CFG scale"] == "5"
    assert a1111["Model"] == "conceptlib/tiny-sd1"
    assert "Model hash" not in a1111
    assert a1111["Conceptlib base fingerprint"] == sd1.fingerprint
    ti = dict(x.split(": ") for x in a1111["TI hashes"].split(", "))
    assert set(ti) == {"cat-toy", "ukiyoe", "hy-phen", "easynegative"}
    assert ti["cat-toy"] == result.embeddings[0].a1111_hash
    # A1111 finds every embedding of the TI hashes in the prompts it reads
    folder = tmp_path / "webui-embeddings"
    export_for_prompt(named, prompt, "a1111", folder, negative=negative)
    applied = {
        **a1111_applied(a1111["Prompt"], folder),
        **a1111_applied(a1111["Negative prompt"], folder),
    }
    assert {Path(f).stem for f in applied} == set(ti)
    # our reader reads back what we write; our syntax is in our own chunk
    ours = parse_infotext(text)
    assert (ours["prompt"], ours["negative"]) == (a1111["Prompt"], a1111["Negative prompt"])
    assert ours["params"]["Conceptlib base fingerprint"] == sd1.fingerprint
    record = json.loads(image.text["conceptlib"])
    assert (record["prompt"], record["negative"]) == (prompt, negative)
    assert record["base"]["model_hash"] is None

    # the same pipeline, as loaded from its own single-file checkpoint
    ckpt = tmp_path / "my-model.safetensors"
    save_single_file(sd1.pipeline, ckpt)
    single = dataclasses.replace(sd1, ref=str(ckpt), model_id=ckpt.name, is_tiny=False)
    seen: list[tuple[int, int]] = []
    for i in range(2):
        res = compose(
            "<cat-toy>",
            base=single,
            library=named,
            seed=1,
            out=tmp_path / f"s{i}.png",
            hash_progress=lambda d, t: seen.append((d, t)),
            **FAST,
        )
        fields = a1111_read_infotext(res.infotexts[0])
        assert fields["Model hash"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
        assert fields["Model"] == "my-model"  # A1111's model name: the file without extension
        assert fields["Conceptlib base fingerprint"] == sd1.fingerprint
        assert res.model_hash == fields["Model hash"]
        if i == 0:
            assert seen and seen[-1] == (ckpt.stat().st_size,) * 2
            seen.clear()
    assert seen == []  # the second time the hash came from the cache
    assert (_isolated_home / "cache" / CACHE_NAME).is_file()


def test_infotext_layout_round_trips_through_both_readers():
    """Values with commas, colons and quotes are quoted so that A1111 (and we) read
    them back whole; a prompt of several lines stays the prompt."""
    from conceptlib.compose.ui.a1111 import infotext

    params = [
        ("Steps", 20),
        ("Sampler", "Euler a"),
        ("Seed", 1),
        ("Model hash", None),
        ("TI hashes", "a: 0123456789ab, b-c: ba9876543210"),
        ("Conceptlib base fingerprint", "fp2:" + "ab" * 32),
        ("Note", 'say "hi"'),
    ]
    text = infotext("line one, (x:0.8)\nline two", "bad, blurry", params)
    a1111 = a1111_read_infotext(text)
    assert a1111["Prompt"] == "line one, (x:0.8)\nline two"
    assert a1111["Negative prompt"] == "bad, blurry"
    assert a1111["TI hashes"] == "a: 0123456789ab, b-c: ba9876543210"
    assert a1111["Conceptlib base fingerprint"] == "fp2:" + "ab" * 32
    assert a1111["Note"] == 'say "hi"' and "Model hash" not in a1111
    ours = parse_infotext(text)
    assert ours["prompt"] == a1111["Prompt"] and ours["negative"] == a1111["Negative prompt"]
    assert {k: ours["params"][k] for k in ("TI hashes", "Note", "Sampler")} == {
        k: a1111[k] for k in ("TI hashes", "Note", "Sampler")
    }


def test_rendering_without_a_catalog_check_still_maps(odd_names):
    """``render_prompts`` on its own (no library) maps names as the UI needs."""
    resolved = resolve_prompt(odd_names, parse_prompt("<cat-toy@v1>"))
    assert render_prompts(resolved, None, "invokeai").prompt == "<cat-toy-v1>"
