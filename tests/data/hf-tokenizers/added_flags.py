"""Writes added-flags.json: ids that `tokenizers` gives when added tokens carry the lstrip, rstrip and
single_word flags, over the byte-level (bytelevel/) and SentencePiece-style (sentencepiece-hf/) tokenizer.json
files made by make.py. The tokens are appended to each file's added_tokens with the ids `tokenizers` assigns,
so a reader that appends the same entries must give the same ids."""
import json
import os

from tokenizers import AddedToken, Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = [  # content, lstrip, rstrip, single_word
    ("<L>", True, False, False), ("<R>", False, True, False), ("<B>", True, True, False),
    ("<W>", False, False, True), ("<WL>", True, False, True),
]
TEXTS = [
    "a  <L>  b", "a  <R>  b", "a \t<B>\n b", "<L>x", "x<R>", "a<W>b a <W> b", " <B> ", "a\u3000<L>b",
    "<L><L>  <R><R> z", "x_<W>", ".<W>.", "-<W>-", "日<W>", "é<W> <W>1", "a <WL>", "ab<WL> ", " <WL>",
    "hello <R>\n\nworld <B>", "  <L>", "<R>   ", "The capital of France is <B> Paris.",
]


def main():
    out = {"tokens": [], "layouts": {}}
    for layout in ("bytelevel", "sentencepiece-hf"):
        tok = Tokenizer.from_file(os.path.join(HERE, layout, "tokenizer.json"))
        tok.add_special_tokens([AddedToken(c, lstrip=l, rstrip=r, single_word=w, normalized=False)
                                for c, l, r, w in TOKENS])
        added = json.loads(tok.to_str())["added_tokens"][-len(TOKENS):]
        out["tokens"].append({"layout": layout, "added_tokens": added})
        out["layouts"][layout] = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS]
    with open(os.path.join(HERE, "added-flags.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
