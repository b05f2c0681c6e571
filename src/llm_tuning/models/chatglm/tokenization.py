"""ChatGLM3's tokenizer without its code: a fast tokenizer built from the folder's sentencepiece `tokenizer.model`.

The original (tokenization_chatglm.py) encodes text with sentencepiece itself and puts nine special tokens after the
sentencepiece vocabulary, in this order: [MASK], [gMASK], [sMASK], sop, eop, <|system|>, <|user|>, <|assistant|>,
<|observation|>. Here the same vocabulary, scores and merges become a `tokenizers` BPE (or Unigram) model with the
normalisation the sentencepiece model declares (its character map, whitespace handling, dummy prefix), byte fallback,
and the special tokens at those ids. As in the original, text that spells a special token is encoded as text (the
special tokens go in by id), and `tokenizer(text)` starts with [gMASK] sop. The conversion is cached by the file's hash
under the cache folder (as the built-in model aliases are).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE, Unigram
from transformers import PreTrainedTokenizerFast

from ...errors import UserError
from ...files import cache_dir, folder_written_whole

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
PREFIX = ("[gMASK]", "sop")  # what the original puts before every encoded text
COMPLETE_MARKER = ".llm-tuning-complete"
# sentencepiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
BPE_TYPE, UNIGRAM_TYPE = 2, 1


def read_sentencepiece(model_file: Path):
    """The sentencepiece model's proto, or a one-line error for a file that is not one (GLM-4's tiktoken file)."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception:  # protobuf's DecodeError and friends: the file is something else
        proto = None
    if proto is None or not proto.pieces:
        raise UserError(
            f"{model_file} is not a sentencepiece model: the built-in ChatGLM tokenizer reads ChatGLM3's (and ChatGLM2's) "
            "tokenizer.model only; GLM-4's tiktoken tokenizer is not supported (use its -hf checkpoint, which transformers "
            "runs natively)"
        )
    return proto


def backend_tokenizer(proto) -> Tokenizer:
    """The sentencepiece model as a `tokenizers` Tokenizer: same ids as sentencepiece's encode for any text."""
    pieces = list(proto.pieces)
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type == BPE_TYPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = BPE(
            vocab,
            bpe_merges(pieces, vocab),
            unk_token=pieces[trainer.unk_id].piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    elif trainer.model_type == UNIGRAM_TYPE:
        # one difference with sentencepiece: text that spells a control piece ("</s>") may become that piece here
        model = Unigram([(p.piece, p.score) for p in pieces], unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise UserError(f"sentencepiece model type {trainer.model_type} is not supported (BPE and Unigram are)")
    tokenizer = Tokenizer(model)
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", left=1, right=0)] if spec.add_dummy_prefix else [])
    )
    # sentencepiece matches user-defined pieces in the raw text; control pieces (<s>, </s>) never come from text
    user_defined = [p.piece for p in pieces if p.type == USER_DEFINED]
    tokenizer.add_tokens([AddedToken(piece, normalized=False, special=False) for piece in user_defined])
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, normalized=False, special=True) for p in pieces if p.type in (UNKNOWN, CONTROL)]
    )
    return tokenizer


def bpe_merges(pieces, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """sentencepiece's BPE merges the adjacent pair whose joined piece scores highest: every split of an ordinary
    piece into two ordinary pieces, ranked by the joined piece's score."""
    ordinary = {p.piece for p in pieces if p.type == NORMAL}
    ranked = sorted((p for p in pieces if p.type == NORMAL and len(p.piece) > 1), key=lambda p: (-p.score, vocab[p.piece]))
    merges = []
    for piece in ranked:
        text = piece.piece
        merges += [(text[:i], text[i:]) for i in range(1, len(text)) if text[:i] in ordinary and text[i:] in ordinary]
    return merges


def convert(model_file: Path) -> PreTrainedTokenizerFast:
    """ChatGLM3's tokenizer from its sentencepiece model: the special tokens after the sentencepiece vocabulary."""
    proto = read_sentencepiece(model_file)
    backend = backend_tokenizer(proto)
    size = len(proto.pieces)
    clashes = [token for token in SPECIAL_TOKENS if backend.token_to_id(token) is not None]
    if clashes:
        raise UserError(f"{model_file}: the sentencepiece vocabulary already has {clashes[0]!r}, a ChatGLM3 special token")
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS])
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(size, size + len(SPECIAL_TOKENS))):
        raise UserError(f"{model_file}: ChatGLM3's special tokens did not land right after the vocabulary ({ids})")
    eos = proto.pieces[proto.trainer_spec.eos_id].piece
    prefix = " ".join(PREFIX)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{prefix} $A",
        pair=f"{prefix} $A $B {eos}",
        special_tokens=[(t, ids[t]) for t in PREFIX] + [(eos, proto.trainer_spec.eos_id)],
    )
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        unk_token=unk,
        pad_token=unk,  # the original pads with <unk> (id 0)
        additional_special_tokens=list(SPECIAL_TOKENS),
        padding_side="left",
        split_special_tokens=True,  # text that spells a special token stays text, as in the original
        clean_up_tokenization_spaces=False,
    )


def chatglm3_tokenizer(model_file: Path) -> PreTrainedTokenizerFast:
    """The converted tokenizer of `model_file`, from the cache (converted on first use, in a fraction of a second
    for ChatGLM3's 65k pieces' merges ... a few seconds)."""
    digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()[:16]
    target = cache_dir() / "tokenizers" / f"chatglm3-{digest}"
    if not (target / COMPLETE_MARKER).exists():
        tokenizer = convert(Path(model_file))
        with folder_written_whole(target) as partial:
            tokenizer.save_pretrained(partial)
            (partial / COMPLETE_MARKER).write_text(f"converted from {model_file}\n")
    return PreTrainedTokenizerFast.from_pretrained(target)
