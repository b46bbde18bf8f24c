#!/usr/bin/env python3
r"""Tokenizer fixtures for dsc (run by hand, never in CI; deterministic).

Does four things, each checked:

1. tests/fixtures/tokenizer_brown/ (tokenizer.json + tokenizer_config.json):
   a 4096-token byte-level BPE trained with `tokenizers` on the bundled
   Brown corpus, with DeepSeek-V3's normalizer-free pipeline (the same
   pre-tokenizer Sequence: three regex Splits then ByteLevel; ByteLevel
   decoder and post-processor), special tokens <｜begin▁of▁sentence｜> = 0 and
   <｜end▁of▁sentence｜> = 1, and <｜User｜> = 2, <｜Assistant｜> = 3 added
   the way V3 has them (special false, normalized true). Its
   tokenizer_config.json has add_bos_token true, bos/eos/pad tokens and the
   V3 chat template copied from the real config. Other fixtures (a tiny model
   with this vocabulary) depend on it, so an existing copy is never
   overwritten: the script retrains and only reports whether it would differ
   (--retrain replaces it).
2. tests/data/deepseek-v3-tokenizer/: the real V3 tokenizer.json compressed
   with xz -9 (created when missing; checked against the source's sha256).
3. tests/fixtures/tokenizer_cases/cases.bin.xz: >= 10,000 test strings and,
   per tokenizer, the ids transformers' LlamaTokenizerFast(tokenizer_file=...,
   add_bos_token=<config>, bos_token=..., eos_token=...)(text)["input_ids"]
   gives (checked to equal [BOS] + tokenizers' Tokenizer.encode(text).ids).
   The tokenizers are V3, brown, and variants of brown whose tokenizer.json
   gets a JSON patch (top-level keys replaced) that exercises what V3 does
   not use: ByteLevel with the GPT-2 regex and add_prefix_space; Split with
   String patterns, every behavior and invert; added tokens with lstrip /
   rstrip / single_word. The C test applies the same patch with jansson.

Format of cases.bin (all integers uint32 little-endian):
    "DSCTOKC1"
    n_tok; per tokenizer: name, base ("v3" or "brown"), patch (JSON text or
        empty) - each as length + bytes - then n_cases_used (it is checked on
        cases 0 .. n_cases_used-1; 2000 for the variants)
    n_cases; per case: length + UTF-8 bytes
    per tokenizer, per case used: n_ids + int32 ids

4. With --unicode-table: src/tokenizer/uranges.c, the code points that
   `tokenizers`' regex engine (Oniguruma, Unicode 16 tables) puts in \p{L},
   \p{N}, \p{P}, \p{S} or \p{M} but PCRE2 10.42 (Unicode 14, the same tables
   as this Python's unicodedata, which the script checks) does not: the
   characters assigned since. The tokenizer adds them to those classes so the
   two engines agree on every code point (src/tokenizer/regex.c).

Usage:  python3 tests/reference/make_tokenizer_cases.py [--retrain] [--unicode-table]
Requires: tokenizers (0.23 used), transformers (5.24 used); reads
/work/shared/data (brown.txt, deepseek-v3-tokenizer/) or --data DIR.
"""

import argparse
import hashlib
import json
import lzma
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # deterministic training

import tokenizers
import transformers
from tokenizers import Tokenizer, pre_tokenizers, trainers
from transformers import LlamaTokenizerFast

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWN_DIR = os.path.join(ROOT, "tests/fixtures/tokenizer_brown")
V3_COPY = os.path.join(ROOT, "tests/data/deepseek-v3-tokenizer")
CASES = os.path.join(ROOT, "tests/fixtures/tokenizer_cases/cases.bin.xz")

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SEED = 20240607

# ---------------------------------------------------------------------------
# 1. the brown tokenizer
# ---------------------------------------------------------------------------


def train_brown(data):
    """Returns (tokenizer.json text, tokenizer_config.json text)."""
    v3 = json.load(open(os.path.join(data, "deepseek-v3-tokenizer/tokenizer.json"), encoding="utf-8"))
    tok = Tokenizer.from_str(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": v3["pre_tokenizer"],
        "post_processor": v3["post_processor"], "decoder": v3["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {}, "merges": []}}))
    tr = trainers.BpeTrainer(vocab_size=4096, special_tokens=[BOS, EOS, USER, ASSISTANT],
                             show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([os.path.join(data, "brown.txt")], tr)
    d = json.loads(tok.to_str(pretty=True))
    for t in d["added_tokens"]:  # the chat tokens as V3 has them
        if t["id"] in (2, 3):
            t["special"] = False
            t["normalized"] = True
    tj = json.dumps(d, ensure_ascii=False, indent=2) + "\n"
    Tokenizer.from_str(tj)
    cfg = json.load(open(os.path.join(data, "deepseek-v3-tokenizer/tokenizer_config.json"), encoding="utf-8"))

    def added(c):
        return {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    out = {"add_bos_token": True, "add_eos_token": False, "bos_token": added(BOS),
           "clean_up_tokenization_spaces": False, "eos_token": added(EOS), "legacy": True,
           "model_max_length": 4096, "pad_token": added(EOS), "unk_token": None,
           "tokenizer_class": "LlamaTokenizerFast", "chat_template": cfg["chat_template"]}
    return tj, json.dumps(out, ensure_ascii=False, indent=2) + "\n"


def ensure_brown(data, retrain):
    tj, cj = train_brown(data)
    a = train_brown(data)
    assert a == (tj, cj), "training is not deterministic"
    paths = [os.path.join(BROWN_DIR, n) for n in ("tokenizer.json", "tokenizer_config.json")]
    if all(os.path.exists(p) for p in paths) and not retrain:
        same = [open(p, encoding="utf-8").read() == s for p, s in zip(paths, (tj, cj))]
        print("brown tokenizer: kept the existing files;",
              "retraining gives identical files" if all(same) else
              "WARNING retraining differs (--retrain would replace them)")
        return
    os.makedirs(BROWN_DIR, exist_ok=True)
    for p, s in zip(paths, (tj, cj)):
        open(p, "w", encoding="utf-8").write(s)
    print("brown tokenizer: written to", BROWN_DIR)


# ---------------------------------------------------------------------------
# 2. the compressed copy of the V3 tokenizer
# ---------------------------------------------------------------------------


def ensure_v3_copy(data):
    src = os.path.join(data, "deepseek-v3-tokenizer")
    os.makedirs(V3_COPY, exist_ok=True)
    xz = os.path.join(V3_COPY, "tokenizer.json.xz")
    if not os.path.exists(xz):
        with open(xz, "wb") as f:
            subprocess.run(["xz", "-9", "-c", os.path.join(src, "tokenizer.json")], stdout=f, check=True)
        shutil.copyfile(os.path.join(src, "tokenizer_config.json"),
                        os.path.join(V3_COPY, "tokenizer_config.json"))
    raw = subprocess.run(["xz", "-dc", xz], stdout=subprocess.PIPE, check=True).stdout
    want = open(os.path.join(src, "tokenizer.json"), "rb").read()
    assert hashlib.sha256(raw).digest() == hashlib.sha256(want).digest(), "V3 copy differs"
    assert open(os.path.join(V3_COPY, "tokenizer_config.json"), "rb").read() == \
        open(os.path.join(src, "tokenizer_config.json"), "rb").read()
    print("V3 copy: %s (%d bytes) matches the source" % (xz, os.path.getsize(xz)))


# ---------------------------------------------------------------------------
# 3. test strings
# ---------------------------------------------------------------------------

C_SNIPPETS = [
    '#include <stdio.h>\n\nint main(int argc, char **argv) {\n    printf("hello, %s\\n", argv[0]);\n    return 0;\n}\n',
    'static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }\n',
    'for (size_t i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n',
    'typedef struct {\n    int64_t n_vocab;   /* highest id + 1 */\n    char *bytes;\n} tok_t;\n',
    'if (x->next == NULL && y != 0x7fffffff) { goto fail; } // TODO: handle ENOMEM\n',
    '#define MAX(a, b) ((a) > (b) ? (a) : (b))\n#define ARRAY_LEN(x) (sizeof(x) / sizeof((x)[0]))\n',
    'switch (c) {\ncase \'\\n\': line++; break;\ncase \'\\t\': col += 8 - col % 8; break;\ndefault: col++;\n}\n',
    'float *restrict out = aligned_alloc(64, 4096 * sizeof(float));\nmemset(out, 0, 4096*4);\n',
    'while ((ch = getc(fp)) != EOF)\n        if (ch == \'\\r\') continue;\n',
    'int x=1,y=2;x+=y<<3;y^=~x&0xFF;return x>=y||!y;\n',
]
PY_SNIPPETS = [
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
    'import numpy as np\nx = np.linspace(0.0, 1.0, num=1000)\nprint(f"{x.mean():.3f} +/- {x.std():.3e}")\n',
    'class Node:\n    def __init__(self, val, next=None):\n        self.val = val\n        self.next = next\n\n    def __repr__(self):\n        return f"Node({self.val!r})"\n',
    'with open("data.json", encoding="utf-8") as f:\n    d = json.load(f)\nfor k, v in sorted(d.items()):\n    print(k, "->", v)\n',
    'squares = [i ** 2 for i in range(10) if i % 2 == 0]  # even squares\n',
    'try:\n    value = int(s)\nexcept (TypeError, ValueError) as e:\n    raise RuntimeError("bad value: %r" % s) from e\n',
    '@dataclass(frozen=True)\nclass Point:\n    x: float = 0.0\n    y: float = 0.0\n',
    'lambda *args, **kwargs: {**kwargs, "n": len(args)}\n',
    'async def main():\n    await asyncio.sleep(0.1)\n\nasyncio.run(main())\n',
    'if __name__ == "__main__":\n    sys.exit(main(sys.argv[1:]))\n',
    'x = {"a": [1, 2, 3], \'b\': (4.5e-3, None, True)}\r\ny = x["a"][-1]\r\n',
    '<div class="row"><a href="https://example.com/?q=1&r=2">link</a></div>\n',
    'SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;\n',
    '$ git commit -m "fix: off-by-one in tokenize()" && make -j2 test\n',
]
CHINESE = [
    "深度求索是一家人工智能公司。", "今天天气很好，我们去公园散步吧！", "机器学习模型需要大量的数据进行训练。",
    "他说：“你好，世界。”然后离开了。", "北京是中华人民共和国的首都，人口超过两千万。", "这个问题的答案是42。",
    "繁體中文與簡體中文不同。", "龍飛鳳舞，龜兔賽跑。", "数学公式：E=mc²，其中c是光速。",
]
JAPANESE = [
    "こんにちは、世界！", "私は東京に住んでいます。", "カタカナとひらがなと漢字が混ざった文章です。",
    "ラーメンを食べたいですね。", "コンピューターサイエンスは面白い。", "「吾輩は猫である。名前はまだ無い。」",
    "ｶﾀｶﾅの半角もあります。", "ヴァイオリンとヴィオラ、ゝゞヽヾ〆ー", "二〇二四年、令和六年。",
]
KOREAN = ["안녕하세요, 세계!", "한국어 문장을 토큰화합니다.", "서울특별시 강남구"]
OTHER_SCRIPTS = [
    "مرحبا بالعالم! هذا نص عربي.", "اللغة العربية ١٢٣٤٥٦٧٨٩٠", "שלום עולם, זה טקסט בעברית.",
    "नमस्ते दुनिया। यह हिंदी है।", "สวัสดีชาวโลก ภาษาไทย", "Привет, мир! Это русский текст.",
    "Γειά σου Κόσμε! αβγδε", "Ελληνικά: ΑΒΓΔ", "Tiếng Việt có dấu: Đường phố Hà Nội",
    "Ünïcödé àccénts: naïve café résumé façade", "Zalgo: Z̴̡̛a̷l̸g̶o̵ t̷e̶x̸t̴", "ﬁ ﬂ ﬀ ligatures",
    "𝐀𝐁𝐂 𝒶𝒷𝒸 𝔸𝔹ℂ math letters", "ℕ ℤ ℚ ℝ ∀x∈ℝ: x² ≥ 0", "ʻokina Hawaiʻi", "ǅ ǈ ǋ titlecase",
    "ትግርኛ ኣማርኛ", "ᏣᎳᎩ Cherokee", "ꦗꦮ Javanese", "Ⅻ Ⅳ ⅳ roman numerals", "½ ¼ ¾ ⅞ fractions",
]
EMOJI = [
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇺🇸🇯🇵🇨🇳", "🇩🇪", "❤️", "❤️‍🔥", "1️⃣2️⃣#️⃣",
    "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "🫠🫡🫶", "🐦‍🔥", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "✌🏻", "☺️", "™©®", "⌚⌛", "🀄🃏",
]
WHITESPACE = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", " \t \n", "\n\n\n\n", "\t\t",
    "    ", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u200b", "\ufeff", "\u2003", "\u180e",
    "\u000b", "\u000c", " \u00a0 ",
]
PUNCT = [".", ",", "!", "?", "...", ";", ":", "'", '"', "(", ")", "[", "]", "{", "}", "-", "--",
         "—", "–", "…", "«", "»", "¿", "¡", "。", "、", "，", "！", "？", "：", "「", "」", "@", "#",
         "$", "%", "^", "&", "*", "+", "=", "<", ">", "/", "\\", "|", "~", "`", "_", "€", "£", "¥",
         "°", "±", "×", "÷", "→", "←", "⇒", "∑", "√", "∞", "♪", "★", "■", "●"]
WORDS = ["the", "The", "THE", "hello", "world", "don't", "I'm", "we've", "you'll", "she'd",
         "it's", "IT'S", "they're", "can't", "o'clock", "rock'n'roll", "e-mail", "U.S.A.", "Mr.",
         "naïve", "über", "Straße", "x", "a", "I", "CamelCase", "snake_case", "kebab-case",
         "http", "www", "deepseek", "DeepSeek-V3", "GPT", "tokenizer", "ÅNGSTRÖM", "ǆemal"]
DIGITS = ["0", "1", "12", "123", "1234", "12345", "123456", "1234567", "3.14159", "1,000,000",
          "2024-06-07", "12:30:45", "0x1F", "1e-9", "٣٤٥", "１２３４", "²³", "⁴⁵⁶", "₁₂", "①②③",
          "९८७", "๑๒๓", "Ⅻ", "〇一二三"]
EXTRA_ADDED = ["[MASK]", "<sw>", "<rs>", "<both>", "<n>"]  # added in the variants' patches


def chat_token_cases(all_added):
    chat = [BOS, EOS, USER, ASSISTANT, "<｜▁pad▁｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>",
            "<｜fim▁end｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>",
            "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁outputs▁end｜>",
            "<think>", "</think>"]
    out = [
        USER + "hi" + ASSISTANT, BOS + "Hello" + EOS, "word" + EOS + "word", EOS + EOS + EOS,
        BOS + USER + "What is 2+2?" + ASSISTANT + "4" + EOS, " " + USER + " hi " + ASSISTANT + " ",
        "<｜User", "User｜>", "<｜User｜", "<<｜User｜>>", "<｜User｜><｜User｜>", USER[:-1] + ASSISTANT,
        "<｜end▁of▁sentence｜", "a<｜end▁of▁sentence｜>b\n", "\n" + EOS + "\n", "<|EOT|>done",
        "text<think>reasoning</think>answer", BOS, EOS, USER, ASSISTANT, "<｜▁pad▁｜>",
        "<｜place▁holder▁no▁7｜>", "x<｜place▁holder▁no▁77｜>y", "<｜place▁holder▁no▁777｜>",
        "<｜place▁holder▁no▁7777｜>", "<｜place▁holder▁no▁", "<| User |>", "<|User|>",
        "[MASK] a [MASK]b  [MASK]  ", "x<sw>y <sw> <sw>z", "a <rs>  b<rs>\n\nc", " <both>  x",
        "<n><n><n>", "<sw>", " <sw> ", "word[MASK]", "ab<both>cd",
    ]
    for a in chat:
        for b in chat[:8]:
            out.append(a + "x" + b)
            out.append("Hello " + a + b + " world\n")
    out += [t for t in all_added]  # every added token of V3 alone
    return out


def make_cases(data, v3_added):
    rng = random.Random(SEED)
    cases = ["", " ", "a", "\n", " hello", "  hello", "\thello", "\nhello", "hello ", "hello\n",
             "Hello world", "Hello, world!\n", "   leading and trailing   "]
    # English: Brown corpus paragraphs, whole (capped) and random slices
    lines = [l for l in open(os.path.join(data, "brown.txt"), encoding="utf-8").read().split("\n") if l]
    for _ in range(3300):
        l = rng.choice(lines)
        if rng.random() < 0.1:
            cases.append(l[:120])
        else:
            i = rng.randrange(len(l))
            cases.append(l[i:i + rng.randint(1, 40)])
    for _ in range(200):  # multi-paragraph with blank lines
        i = rng.randrange(len(lines) - 3)
        cases.append("\n\n".join(x[:25] for x in lines[i:i + 3]))
    # code: whole snippets and slices
    code = C_SNIPPETS + PY_SNIPPETS
    cases += code
    for _ in range(900):
        s = rng.choice(code)
        i = rng.randrange(len(s))
        cases.append(s[i:i + rng.randint(1, 40)])
    # scripts, emoji, whitespace, digits, punctuation: alone and combined
    scripts = CHINESE + JAPANESE + KOREAN + OTHER_SCRIPTS
    cases += scripts + EMOJI + WHITESPACE + DIGITS + PUNCT
    pools = [scripts, EMOJI, WHITESPACE, DIGITS, PUNCT, WORDS]
    for _ in range(2200):  # mixed: 2-7 random pieces from random pools
        parts = []
        for _ in range(rng.randint(2, 7)):
            pool = rng.choice(pools)
            p = rng.choice(pool)
            if pool is scripts:
                i = rng.randrange(len(p))
                p = p[i:i + rng.randint(1, 8)]
            parts.append(p)
        cases.append("".join(parts))
    # runs of white space, punctuation + newline combos, long digit runs
    ws = [" ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000"]
    for _ in range(600):
        run = "".join(rng.choice(ws) for _ in range(rng.randint(1, 12)))
        w = rng.choice(WORDS)
        cases.append(rng.choice([run + w, w + run, w + run + w, run, w + rng.choice(PUNCT) + run + w]))
    for p in [".", "!", "?", ",", ":", ";", ")", "...", "。", "\"", "'", "}", "]", "!!", "?!", ".)"]:
        for nl in ["\n", "\n\n", "\r\n", " \n", "\n \n", "\n\t"]:
            cases.append("End" + p + nl + "Next")
            cases.append(p + nl)
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 31, 32, 33, 64, 100, 257, 600]:
        cases.append("".join(rng.choice("0123456789") for _ in range(n)))
        cases.append("x" + "9" * n + "y")
        cases.append(" " * n + "z")
        cases.append("\n" * n)
        cases.append("-" * n)
    cases += ["a" * 300, "ab" * 200, " " * 500 + "end", "x" + "\t" * 40, "=" * 128, "_" * 128]
    # special tokens glued to text (V3's and the variants' extra ones)
    cases += chat_token_cases(v3_added)
    # fuzz: characters from an interesting pool, including combining marks,
    # controls, non-BMP, private use and rarely-assigned code points
    pool = list("abcXYZ019 \t\n\r.,!?'\"-_()[]{}<>|/\\@#$%^&*+=~`;:") + [
        "é", "ß", "ñ", "Ω", "ж", "ש", "ع", "अ", "ก", "中", "文", "日", "本", "の", "ひ", "カ", "ー",
        "한", "\u0301", "\u0308", "\u093f", "\u0e31", "\u200d", "\ufe0f", "\U0001f600", "\U0001f44d",
        "\U0001f3fd", "\U0001f1fa", "\U0001f1f8", "\u20e3", "\u00a0", "\u3000", "\u2028", "\u0085",
        "\u200b", "\ufeff", "\u0000", "\u0001", "\u001f", "\u007f", "\u00ad", "\ue000", "\U000f0000",
        "\U00010348", "\U0001d400", "²", "½", "٣", "１", "Ⅻ", "①", "€", "©", "→", "♪", "。", "「",
        "」", "、", "\u2029", "\u180e", "\u2066", "\U000e0067", "\u0378", "\u0e5b", "\U0001fae8",
    ]
    for _ in range(2400):
        cases.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 24))))
    # no surrogates (they cannot be UTF-8), unique, deterministic order
    seen, out = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


# ---------------------------------------------------------------------------
# 4. tokenizers, expected ids, the file
# ---------------------------------------------------------------------------

# Variants of the brown tokenizer: top-level keys of tokenizer.json replaced.
def variants(brown_json):
    brown = json.loads(brown_json)
    extra = [
        {"id": 4096, "content": "[MASK]", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 4097, "content": "<sw>", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False},
        {"id": 4098, "content": "<rs>", "single_word": False, "lstrip": False, "rstrip": True,
         "normalized": True, "special": False},
        {"id": 4099, "content": "<both>", "single_word": False, "lstrip": True, "rstrip": True,
         "normalized": True, "special": True},
        {"id": 4100, "content": "<n>", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
    ]
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                              "use_regex": True},
            "normalizer": {"type": "Sequence", "normalizers": []}}
    splits = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[.,;!?]+"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": "\\p{L}"}, "behavior": "Contiguous", "invert": True},
        {"type": "Split", "pattern": {"String": "e"}, "behavior": "Isolated", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]},
        "added_tokens": brown["added_tokens"] + extra}
    return [("brown_gpt2", json.dumps(gpt2, ensure_ascii=False)),
            ("brown_splits", json.dumps(splits, ensure_ascii=False))]


def patched(base_json, patch):
    d = json.loads(base_json)
    if patch:
        d.update(json.loads(patch))
    return json.dumps(d, ensure_ascii=False)


def expected_ids(tok_json, cfg, cases, tmp, round_trip):
    """transformers' tokenizer(text)["input_ids"], checked against tokenizers."""
    path = os.path.join(tmp, "tokenizer.json")
    open(path, "w", encoding="utf-8").write(tok_json)
    tk = Tokenizer.from_file(path)
    lt = LlamaTokenizerFast(tokenizer_file=path, add_bos_token=cfg["add_bos_token"],
                            add_eos_token=cfg.get("add_eos_token", False),
                            bos_token=cfg["bos_token"]["content"], eos_token=cfg["eos_token"]["content"])
    bos = tk.token_to_id(cfg["bos_token"]["content"])
    ids = []
    for i, c in enumerate(cases):
        raw = tk.encode(c).ids
        want = lt(c)["input_ids"]
        assert want == [bos] + raw, (i, c, want[:20], raw[:20])
        assert not round_trip or tk.decode(raw, skip_special_tokens=False) == c, (i, c)  # byte-level round trip
        ids.append(want)
    return ids


# ---------------------------------------------------------------------------
# 5. Unicode classes Oniguruma knows and PCRE2 10.42 does not
# ---------------------------------------------------------------------------

UCLASSES = "LNPSM"


def onig_class_members(cls):
    """Code points the regex \\p{cls} matches in `tokenizers` (Oniguruma)."""
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
          "normalizer": None, "post_processor": None, "decoder": None,
          "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\p{%s}" % cls},
                            "behavior": "Removed", "invert": False},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False, "vocab": {}, "merges": []}}
    pt = Tokenizer.from_str(json.dumps(tj)).pre_tokenizer
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    members = []
    for s in range(0, len(cps), 8192):
        chunk = cps[s:s + 8192]
        text = "".join(chr(c) for c in chunk)
        kept = bytearray(len(chunk))  # Removed: what survives did not match
        for _, (a, b) in pt.pre_tokenize_str(text):
            kept[a:b] = b"\x01" * (b - a)
        members += [c for i, c in enumerate(chunk) if not kept[i]]
    return members


def write_unicode_table():
    import unicodedata
    assert unicodedata.unidata_version == "14.0.0", \
        "needs a Python whose unicodedata is Unicode 14.0 (PCRE2 10.42's tables), e.g. 3.11"
    path = os.path.join(ROOT, "src/tokenizer/uranges.c")
    out = ["/*",
           " * uranges.c - GENERATED by `python3 tests/reference/make_tokenizer_cases.py",
           " * --unicode-table` (tokenizers %s); do not edit." % tokenizers.__version__,
           " *",
           " * Per general category, the code points that Oniguruma (the regex engine of",
           " * Hugging Face `tokenizers`, Unicode 16 tables) matches with \\p{X} but PCRE2",
           " * 10.42 (Unicode 14 tables) does not: the characters assigned in Unicode",
           " * 15.0 - 16.0 (new emoji such as U+1FAE8, CJK extension I, ...). regex.c adds",
           " * them to the classes; with a newer PCRE2 that knows them they change nothing.",
           " */",
           '#include "tokenizer/tok.h"', ""]
    total = 0
    for cls in UCLASSES:
        extra = [c for c in onig_class_members(cls)
                 if not unicodedata.category(chr(c)).startswith(cls)]
        ranges = []
        for c in extra:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        total += len(extra)
        out.append("static const uint32_t extra_%s[][2] = {" % cls)
        for i in range(0, len(ranges), 4):
            out.append("    " + " ".join("{0x%04X, 0x%04X}," % (a, b) for a, b in ranges[i:i + 4]))
        out.append("};")
    out.append("")
    out.append("const tok_uclass tok_uclasses[TOK_N_UCLASSES] = {")
    for cls in UCLASSES:
        out.append("    {'%s', extra_%s, sizeof extra_%s / sizeof extra_%s[0]}," % (cls, cls, cls, cls))
    out.append("};")
    open(path, "w").write("\n".join(out) + "\n")
    print("%s: %d code points" % (os.path.relpath(path, ROOT), total))


def u32(n):
    return struct.pack("<I", n)


def lp(b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return u32(len(b)) + b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--retrain", action="store_true", help="replace tests/fixtures/tokenizer_brown")
    ap.add_argument("--unicode-table", action="store_true", help="also write src/tokenizer/uranges.c")
    args = ap.parse_args()
    if args.unicode_table:
        write_unicode_table()
    print("tokenizers", tokenizers.__version__, "transformers", transformers.__version__)
    ensure_brown(args.data, args.retrain)
    ensure_v3_copy(args.data)

    v3_json = open(os.path.join(args.data, "deepseek-v3-tokenizer/tokenizer.json"), encoding="utf-8").read()
    v3_cfg = json.load(open(os.path.join(args.data, "deepseek-v3-tokenizer/tokenizer_config.json"), encoding="utf-8"))
    brown_json = open(os.path.join(BROWN_DIR, "tokenizer.json"), encoding="utf-8").read()
    brown_cfg = json.load(open(os.path.join(BROWN_DIR, "tokenizer_config.json"), encoding="utf-8"))
    v3_added = [t["content"] for t in json.loads(v3_json)["added_tokens"]]
    cases = make_cases(args.data, v3_added)
    assert len(cases) >= 10000, len(cases)
    n_sub = 2000  # the variants are checked on the first 2000 cases (all kinds)
    order = list(range(len(cases)))
    random.Random(SEED + 1).shuffle(order)
    cases = [cases[i] for i in order]

    toks = [("v3", "v3", "", v3_json, v3_cfg, len(cases)),
            ("brown", "brown", "", brown_json, brown_cfg, len(cases))]
    for name, patch in variants(brown_json):
        toks.append((name, "brown", patch, patched(brown_json, patch), brown_cfg, n_sub))

    blob = [b"DSCTOKC1", u32(len(toks))]
    id_blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, base, patch, tj, cfg, n in toks:
            ids = expected_ids(tj, cfg, cases[:n], tmp, not patch)
            print("%-13s %6d cases, %8d ids" % (name, n, sum(len(x) for x in ids)))
            blob += [lp(name), lp(base), lp(patch), u32(n)]
            id_blocks.append(b"".join(u32(len(x)) + struct.pack("<%di" % len(x), *x) for x in ids))
    blob.append(u32(len(cases)))
    blob += [lp(c) for c in cases]
    blob += id_blocks
    raw = b"".join(blob)
    os.makedirs(os.path.dirname(CASES), exist_ok=True)
    xz = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                       preset=9 | lzma.PRESET_EXTREME)
    open(CASES, "wb").write(xz)
    print("%s: %d cases, %d bytes raw, %d bytes xz, sha256 %s" % (
        os.path.relpath(CASES, ROOT), len(cases), len(raw), len(xz), hashlib.sha256(raw).hexdigest()))


if __name__ == "__main__":
    sys.exit(main())
