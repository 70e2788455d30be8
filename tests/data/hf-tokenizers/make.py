"""Makes the HF-format tokenizer goldens in this folder (run from anywhere; needs tokenizers, transformers,
sentencepiece and protobuf). Every file here is written by those libraries, and every expected id list is
their output: the crate's reader and encoders are checked against independent implementations.

- bytelevel/: a byte-level BPE (SmolLM2's layout: Digits(individual) then ByteLevel, ChatML specials) trained
  by `tokenizers` on ../shared/DESIGN.md, saved by transformers' PreTrainedTokenizerFast.
- llama3/: a byte-level BPE in Llama-3's layout (its Split regex, then ByteLevel without regex; ignore_merges;
  `<|begin_of_text|> $A`) trained by `tokenizers` on the same text.
- sentencepiece/ and sentencepiece-hf/: a SentencePiece BPE with byte fallback (Llama-2's options: identity
  normalizer, no whitespace collapsing, dummy prefix, digits split; one user-defined piece; 512 tokens, the
  vocabulary of tests/data/tiny-plain, so the two make a checkpoint directory) trained by `sentencepiece`.
  sentencepiece/tokenizer.model is its own protobuf; sentencepiece-hf/tokenizer.json is transformers'
  conversion of it (`SpmConverter.build_tokenizer_from_spm_proto`) with the `<s> $A` template of Llama's
  tokenizer.json files; sentencepiece-legacy/ and sentencepiece-first/ hold the same vocabulary and merges in
  Llama-2's layout (Prepend + Replace normalizer) and in the non-legacy one (Metaspace, prefix on the first
  segment only).
- cases.json: per string, the ids each library gives.
"""
import json
import os
import sys

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../.."))
# The shared design notes: a fixed text, so the files here only change when this script does.
CORPUS = [os.path.join(ROOT, "..", "shared", "DESIGN.md")]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = [
    "Hello, world!", "The capital of France is", "  leading spaces", "trailing   ", "multiple   spaces  between",
    "tabs\tand\nnewlines\n\n", "Numbers 12345 and 3.14159", "value =  7", "naïve café résumé",
    "日本語のテキスト", "emoji 🦀🚀 mix", "<|im_start|>user\nHi<|im_end|>\n", "", " ", "a",
    "don't can't it's I'M", "CamelCaseWords and snake_case_words", "x\u0004y", "kernels/gemv.wgsl: 576x1536",
    "  <|im_end|>  after", "Ünïcödé ΑΒΓ αβγ абв", "\n", "end.",
    "I'M DON'T you're We'LL", "12345 67 8", "a\r\nb\r\n\r\n  c", "x\u00a0y\u3000z\u2009w\u0085v", "  hi  there  ",
    "at zzyzx zzyzxq",
]
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")


def lines():
    out = []
    for path in CORPUS:
        with open(path, encoding="utf-8") as f:
            out.extend(f.read().splitlines())
    return out + ["日本語のテキスト ΑΒΓ αβγ абв naïve café"] * 3


def bytelevel(cases):
    d = os.path.join(HERE, "bytelevel")
    os.makedirs(d, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", chat_template=CHATML)
    fast.save_pretrained(d)
    for c in cases:
        c["bytelevel"] = fast(c["text"], add_special_tokens=True)["input_ids"]
    chat = [{"role": "user", "content": "What is 2+3?"}]
    return {"messages": chat,
            "bytelevel": fast.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)}


def llama3(cases):
    d = os.path.join(HERE, "llama3")
    os.makedirs(d, exist_ok=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines(), trainer)
    # A word no merge sequence reaches, so only ignore_merges gives it whole (as Llama-3's vocabulary has).
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"]["\u0120zzyzx"] = tok.get_vocab_size()
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.save_pretrained(d)
    for c in cases:
        c["llama3"] = fast(c["text"], add_special_tokens=True)["input_ids"]


def sentencepiece(cases):
    d = os.path.join(HERE, "sentencepiece")
    os.makedirs(d, exist_ok=True)
    corpus = os.path.join(d, "corpus.tmp")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines()))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(d, "tokenizer"), model_type="bpe", vocab_size=512,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, user_defined_symbols=["<|tool|>"],
        character_coverage=0.9995, bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(d, "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
    # transformers' own conversion of a SentencePiece model (what it does for a tokenizer.model with no
    # matching class), plus the BOS template Llama's tokenizer.json files carry.
    proto = import_protobuf().ModelProto()
    with open(os.path.join(d, "tokenizer.model"), "rb") as f:
        proto.ParseFromString(f.read())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(d + "-hf")
    variants = {
        # Llama-2's tokenizer.json (transformers' legacy LlamaConverter): Prepend + Replace, no pre-tokenizer.
        "legacy": (normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]), None),
        # The non-legacy layout: Metaspace adding the prefix to the text's first segment only.
        "first": (None, pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)),
    }
    for name, (normalizer, pre) in variants.items():
        tok = Tokenizer.from_file(os.path.join(d + "-hf", "tokenizer.json"))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        fast_v = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        fast_v.save_pretrained(f"{d}-{name}")
        for c in cases:
            c[f"sentencepiece_{name}"] = fast_v(c["text"], add_special_tokens=True)["input_ids"]
    for c in cases:
        # SentencePiece itself never matches control tokens written in the text (the crate does, as
        # transformers and llama.cpp do), so those strings have no SentencePiece ids.
        c["sentencepiece_hf"] = fast(c["text"], add_special_tokens=True)["input_ids"]
        if "<s>" not in c["text"] and "</s>" not in c["text"]:
            c["sentencepiece"] = sp.encode(c["text"])
            c["sentencepiece_decoded"] = sp.decode(c["sentencepiece"])


def main():
    cases = [{"text": t} for t in TEXTS + ["a <|tool|> b", "<|tool|>x", "x<|tool|>", "<s>hello</s> world", " <s>x",
                                           "x<s> y", "<s> </s>"]]
    chat = bytelevel(cases)
    llama3(cases)
    sentencepiece(cases)
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases, "chat": chat}, f, ensure_ascii=False, indent=0)
    print(f"{len(cases)} cases written", file=sys.stderr)


if __name__ == "__main__":
    main()
