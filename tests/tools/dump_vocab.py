#!/usr/bin/env python3
"""Write the tokenizer arrays of a GGUF file to a plain text file the C tests can read.

Usage: python3 tests/tools/dump_vocab.py MODEL.gguf OUT.vocab

Format (one record per line, strings hex-encoded so any byte is safe):
    tkv-vocab 1
    model <tokenizer.ggml.model>
    pre <tokenizer.ggml.pre or default>
    bos|eos|unk|pad <id or -1>
    add_bos <0|1>
    add_space_prefix <0|1>
    tokens <n>
    <type> <score> <hex text>          (n lines)
    merges <m>
    <hex "left right">                  (m lines)
"""
import sys

import gguf


def field_value(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def field_array(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types[-1] == gguf.GGUFValueType.STRING:
        return [bytes(f.parts[i]) for i in f.data]
    return [f.parts[i].tolist()[0] for i in f.data]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    r = gguf.GGUFReader(sys.argv[1])
    tokens = field_array(r, "tokenizer.ggml.tokens")
    if tokens is None:
        sys.exit("no tokenizer.ggml.tokens in " + sys.argv[1])
    types = field_array(r, "tokenizer.ggml.token_type") or [1] * len(tokens)
    scores = field_array(r, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    merges = field_array(r, "tokenizer.ggml.merges") or []
    with open(sys.argv[2], "w", encoding="ascii") as out:
        out.write("tkv-vocab 1\n")
        out.write("model %s\n" % field_value(r, "tokenizer.ggml.model"))
        out.write("pre %s\n" % field_value(r, "tokenizer.ggml.pre", "default"))
        for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                          ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
            out.write("%s %d\n" % (name, field_value(r, "tokenizer.ggml." + key, -1)))
        out.write("add_bos %d\n" % int(bool(field_value(r, "tokenizer.ggml.add_bos_token", 0))))
        out.write("add_space_prefix %d\n"
                  % int(bool(field_value(r, "tokenizer.ggml.add_space_prefix", 1))))
        out.write("tokens %d\n" % len(tokens))
        for t, ty, sc in zip(tokens, types, scores):
            out.write("%d %r %s\n" % (ty, float(sc), t.hex() or "-"))
        out.write("merges %d\n" % len(merges))
        for m in merges:
            out.write("%s\n" % (m.hex() or "-"))


if __name__ == "__main__":
    main()
