#!/usr/bin/env python3
"""Make tokenizer reference cases with the Hugging Face `tokenizers` package.

Usage: python3 tests/tools/make_tok_cases.py VOCAB OUT.cases [--pre NAME] [--text FILE]...

VOCAB is a file written by dump_vocab.py (byte-level BPE, tokenizer.ggml.model "gpt2").
A tokenizers.Tokenizer is built from the same vocabulary and merges with the pre-tokenizer
the GGUF name stands for, as the models' tokenizer.json files configure it:
    smollm          Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]
    gpt2, default   ByteLevel(use_regex=True)
    llama3 (+ llama-bpe, llama-v3)
                    Sequence[Split(llama3 regex, isolated), ByteLevel(use_regex=False)],
                    BPE(ignore_merges=True)
    qwen2           as llama3 with \\p{N} single digits, ignore_merges=False
--pre overrides the vocabulary's pre-tokenizer (the cases file then names it, so the C
test builds its tokenizer with that pre-tokenizer): this checks each hand-written regex
against a real regex engine on one vocabulary.

Texts: built-in cases (prose, code, digits, whitespace runs, contractions, accents, CJK,
emoji, special tokens), paragraphs and a long stretch of every --text file, and seeded
random strings over a mixed alphabet.  Control tokens are added as special tokens; a case
that contains one is encoded with parse_special 1, the others once with 1 and once with 0
where they differ (they never do without special tokens in the text).

Output, one case per line:  <parse_special> <hex text or -> <n> <id> ... ; the first line
may be "pre <name>".
"""
import argparse
import random

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


def read_vocab(path):
    v = {"tokens": [], "types": [], "merges": []}
    with open(path, encoding="ascii") as f:
        assert f.readline().split() == ["tkv-vocab", "1"]
        while True:
            line = f.readline()
            if not line:
                break
            key, val = line.split()
            if key == "tokens":
                for _ in range(int(val)):
                    ty, _score, hx = f.readline().split()
                    v["types"].append(int(ty))
                    v["tokens"].append(b"" if hx == "-" else bytes.fromhex(hx))
            elif key == "merges":
                for _ in range(int(val)):
                    hx = f.readline().strip()
                    v["merges"].append(bytes.fromhex(hx).decode("utf-8"))
            else:
                v[key] = val
    return v


def build(v, pre, with_specials):
    vocab = {}
    for i, t in enumerate(v["tokens"]):
        vocab.setdefault(t.decode("utf-8", "replace"), i)
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    llama3 = pre in ("llama3", "llama-bpe", "llama-v3")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=llama3))
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in ("gpt2", "default"):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif llama3 or pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3 if llama3 else QWEN2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise SystemExit("unsupported pre-tokenizer " + pre)
    tok.decoder = decoders.ByteLevel()
    if with_specials:
        tok.add_special_tokens([
            AddedToken(t.decode("utf-8"), special=True, normalized=False)
            for t, ty in zip(v["tokens"], v["types"]) if ty == 3 and t])
    return tok


BUILTIN = [
    "", " ", "  ", "\n", "Hello world", "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'd go.",
    "SHOUTING DON'T WON'T I'LL WE'RE THEY'VE IT'S I'M HE'D", "rock'n'roll ''s 's",
    "1234567", "3.14159", "1,000,000 and 42nd", "a 1 b  22 c   333", "x1y22z333w4444",
    "a   b\n\n\tc", "  leading and trailing  ", "tabs\tand\nnewlines\r\nmixed",
    "line1\n\n\nline2\n \n  \nend\n", "trailing newline\n", "\t\t\tindent",
    "def foo(x):\n    return x ** 2  # square\n\nprint(foo(3))\n",
    "for (int i = 0; i < n; i++) { sum += a[i]; }",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
    "Café naïve résumé façade Ångström über straße",
    "e\u0301 combining accents: a\u0300\u0301\u0302",
    "你好，世界！这是一个测试。", "日本語のテキストとカタカナ ー", "한국어 텍스트입니다",
    "Россия и Україна", "مرحبا بالعالم", "Ελληνικά γράμματα",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ 🤖🚀", "👨‍👩‍👧‍👦 family", "math ∑∫√∞ ≤ ≥ ≠ ½ ² ³ Ⅻ",
    "nbsp\u00a0here and\u2003em space\u3000ideographic", "zero\u200bwidth",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces}", "a--b__c..d",
    "https://example.com/path?q=1&r=2#frag", "user@example.com",
    "Numbers: ٣٤٥ (Arabic-Indic), ५६७ (Devanagari), 一二三",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start",
    "x <filename>y</filename>", "\u00ad soft hyphen", "\x7f\x01 controls",
]

ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3 +
            list("0123456789") * 2 + list("     ") * 4 + ["\n", "\n", "\t", "\r", "\r\n"] +
            list("'.,;:!?-_()[]{}\"/\\@#$%^&*+=<>|~`") +
            ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"] +
            list("éèêàçñöüßøåÉÀ") + list("αβγδ") + list("абвгд") + list("你好世界日本") +
            ["😀", "👍🏽", "🇺🇸", "❤️", "\u0301", "\u00a0", "\u3000", "\u2028", "\u0085",
             "٣", "५", "½", "²", "Ⅻ", "\u200b", "\u00ad", "€", "—"])


def texts(files, seed=1234):
    out = list(BUILTIN)
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = f.read()
        paras = [p for p in data.split("\n\n") if p.strip()]
        step = max(1, len(paras) // 400)
        out += paras[::step][:400]
        out.append(data[100000:160000])
    rng = random.Random(seed)
    for _ in range(1500):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    # random code points (mostly below U+3000, some anywhere), mixed with ASCII and spaces
    for _ in range(500):
        chars = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.3:
                chars.append(rng.choice(ALPHABET))
            else:
                top = 0x3000 if r < 0.8 else 0x10FFFF
                cp = rng.randint(0x20, top)
                chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else " ")
        out.append("".join(chars))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vocab")
    ap.add_argument("out")
    ap.add_argument("--pre")
    ap.add_argument("--text", action="append", default=[])
    args = ap.parse_args()
    v = read_vocab(args.vocab)
    assert v["model"] == "gpt2", "only byte-level BPE vocabularies"
    pre = args.pre or v["pre"]
    plain = build(v, pre, False)
    special = build(v, pre, True)
    specials = [t.decode("utf-8") for t, ty in zip(v["tokens"], v["types"]) if ty == 3 and t]
    n = 0
    with open(args.out, "w", encoding="ascii") as out:
        if args.pre:
            out.write("pre %s\n" % args.pre)
        for t in texts(args.text):
            hx = t.encode("utf-8").hex() or "-"
            has_special = any(s in t for s in specials)
            modes = [1, 0] if has_special else [0]
            for ps in modes:
                ids = (special if ps else plain).encode(t, add_special_tokens=False).ids
                out.write("%d %s %d%s\n" % (ps, hx, len(ids), "".join(" %d" % i for i in ids)))
                n += 1
    print("%d cases written to %s (pre-tokenizer %s)" % (n, args.out, pre))


if __name__ == "__main__":
    main()
