#!/usr/bin/env python3
"""st-merge.py A B OUT: a safetensors file with every tensor of A, plus the
tensors of B whose names A lacks (bytes copied as they are; B's copies of
A's names are ignored). Standard library only: the format is an 8-byte
little-endian header length, a JSON header of {name: {dtype, shape,
data_offsets}}, then the data. Used by study-long-context.sh to give the
trained dense model a DSA indexer (and its optimizer moments)."""
import json
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def main(a, b, out):
    header, chunks, off = {}, [], 0
    ha, da = load(a)
    hb, db = load(b)
    for h, data, names in ((ha, da, [k for k in ha if k != "__metadata__"]),
                           (hb, db, [k for k in hb if k != "__metadata__" and k not in ha])):
        for k in names:
            s, e = h[k]["data_offsets"]
            header[k] = {"dtype": h[k]["dtype"], "shape": h[k]["shape"],
                         "data_offsets": [off, off + e - s]}
            chunks.append(data[s:e])
            off += e - s
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: st-merge.py A B OUT")
    main(*sys.argv[1:])
