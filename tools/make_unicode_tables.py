#!/usr/bin/env python3
"""Where the Unicode tables zerolora's tokenizer.json pipeline runs on (PCRE2, utf8proc) and
Hugging Face tokenizers' disagree: writes src/data/unicode_class_delta.inc (regular
expression classes) and src/data/unicode_text_delta.inc (normalisation forms, lowercase).

tokenizer.json's Split and ByteLevel patterns run on Oniguruma inside `tokenizers`, whose
Unicode tables are newer than the PCRE2 Debian 12 ships (tokenizers 0.23: Unicode 16.0; PCRE2
10.42: Unicode 14.0). A letter assigned since then (Cyrillic TJE U+1C89, the CJK Extension I
ideographs, ...) is \\p{L} to one and not to the other, so the pre-tokenizer splits a text
differently and the ids differ. Oniguruma's \\w and \\d are also other sets than PCRE2's
(\\w: letters, marks, decimal digits and connector punctuation, not every number).

For each class below, the code points where the two disagree are probed, not read from the
Unicode Character Database: what has to be matched is what tokenizers does. Both engines are
asked about every code point: tokenizers through a Split pre-tokenizer that removes the
class's matches, PCRE2 (libpcre2-32, the library zerolora links in its 8-bit form, the same
tables) one code point at a time. src/data/text_regex.cpp reads the table: it applies it
where the linked PCRE2 has the Unicode version recorded here, and leaves the classes to PCRE2
where it does not.

tokenizers' normalisers are older still: NFC, NFD, NFKC and NFKD come from the Rust crate
unicode-normalization-alignments, whose data predate Unicode 10 (U+0D3B, a Unicode 10 mark,
is a starter without a class to it), while utf8proc (Debian 12: 2.8, Unicode 15.0) knows
hundreds of marks, decompositions and compositions more. The code points whose normalisation
tokenizers does not know but utf8proc does are listed: tokenizers treats each as an unassigned
one (a starter, no decomposition, composing with nothing), so unicode_text.cpp normalises the
text between them and leaves them as they are. Each is checked here to be unknown to tokenizers
in every respect, else the table could not make the two equal and the tool fails. The Lowercase
normaliser is Rust's char::to_lowercase (the full mapping: U+0130 becomes two code points, no
final-sigma rule); the code points where utf8proc_tolower gives another result are listed
with tokenizers' lowercase.

  --check   fail when the committed table differs from what the installed stack gives
"""
import argparse
import ctypes
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "data" / "unicode_class_delta.inc"
TEXT_OUT = ROOT / "src" / "data" / "unicode_text_delta.inc"

# General categories (one and two letters; not Cs: a surrogate is not a character in UTF-8
# text), and the two class escapes whose Oniguruma meaning is not PCRE2's.
CLASSES = ["L", "LC", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
           "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
           "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Co", "Cn", "w", "d", "White_Space",
           # the Whitespace pre-tokenizer's word class (Rust regex's \w), as hf_text_steps.cpp
           # spells it: [\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]
           "Alphabetic", "Join_Control"]
ESCAPES = {"w": r"\w", "d": r"\d"}
CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def pattern(name):
    return ESCAPES.get(name, r"\p{" + name + "}")


def tokenizers_sets():
    from tokenizers import Regex, pre_tokenizers
    text = "".join(map(chr, CODE_POINTS))
    sets = {}
    for name in CLASSES:
        members = [True] * len(CODE_POINTS)
        split = pre_tokenizers.Split(Regex(pattern(name)), behavior="removed")
        for piece, (begin, end) in split.pre_tokenize_str(text):
            assert len(piece) == end - begin
            for i in range(begin, end):
                members[i] = False
        sets[name] = {c for c, m in zip(CODE_POINTS, members) if m}
    return sets


class Pcre2:
    UTF, UCP, ANCHORED, UNICODE_VERSION = 0x00080000, 0x00020000, 0x80000000, 10

    def __init__(self):
        self.lib = ctypes.CDLL("libpcre2-32.so.0")
        self.lib.pcre2_compile_32.restype = ctypes.c_void_p
        self.lib.pcre2_compile_32.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32,
                                              ctypes.POINTER(ctypes.c_int),
                                              ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
        self.lib.pcre2_match_data_create_32.restype = ctypes.c_void_p
        self.lib.pcre2_match_data_create_32.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
        self.lib.pcre2_match_32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p,
                                            ctypes.c_void_p]

    def unicode_version(self):
        buffer = (ctypes.c_uint32 * 32)()
        self.lib.pcre2_config_32(self.UNICODE_VERSION, buffer)
        return "".join(chr(c) for c in buffer if c)

    def members(self, regex):
        units = (ctypes.c_uint32 * len(regex))(*map(ord, regex))
        error, offset = ctypes.c_int(), ctypes.c_size_t()
        code = self.lib.pcre2_compile_32(units, len(regex), self.UTF | self.UCP | self.ANCHORED,
                                         ctypes.byref(error), ctypes.byref(offset), None)
        assert code, regex
        match = self.lib.pcre2_match_data_create_32(1, None)
        subject = (ctypes.c_uint32 * 1)()
        found = set()
        for c in CODE_POINTS:
            subject[0] = c
            if self.lib.pcre2_match_32(code, subject, 1, 0, 0, match, None) > 0:
                found.add(c)
        return found


def ranges(points):
    out = []
    for c in sorted(points):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def c_rows(items, indent="    "):
    lines, row = [], indent[:-1]
    for item in items:
        if len(row) + len(item) + 2 > 100:
            lines.append(row)
            row = indent[:-1]
        row += " " + item + ","
    if row.strip():
        lines.append(row)
    return lines


class Utf8proc:
    def __init__(self):
        self.lib = ctypes.CDLL("libutf8proc.so.2")
        for name in ["utf8proc_NFKD", "utf8proc_NFC", "utf8proc_NFD", "utf8proc_NFKC"]:
            getattr(self.lib, name).restype = ctypes.c_void_p
            getattr(self.lib, name).argtypes = [ctypes.c_char_p]
        self.lib.utf8proc_get_property.restype = ctypes.POINTER(ctypes.c_int16)
        self.lib.utf8proc_tolower.restype = ctypes.c_int32
        self.lib.utf8proc_unicode_version.restype = ctypes.c_char_p
        self.libc = ctypes.CDLL(None)
        self.libc.free.argtypes = [ctypes.c_void_p]

    def unicode_version(self):
        return self.lib.utf8proc_unicode_version().decode()

    def form(self, name, text):
        result = getattr(self.lib, "utf8proc_" + name)(text.encode("utf-8", "surrogatepass"))
        out = ctypes.string_at(result).decode()
        self.libc.free(result)
        return out

    def combining_class(self, c):
        return self.lib.utf8proc_get_property(c)[1]  # after the category, both int16

    def lowercase(self, c):
        return chr(self.lib.utf8proc_tolower(c))


def normalization_barriers(utf8proc):
    """The code points utf8proc normalises and tokenizers leaves as unassigned ones."""
    from tokenizers import normalizers
    nfkd, nfc = normalizers.NFKD(), normalizers.NFC()

    def unknown_to_tokenizers(c):
        """No decomposition, and no class: a mark of another class next to it is not moved
        past it (U+0345's class is 240, U+0316's 220)."""
        ch = chr(c)
        beside = ch + "\u0316" if utf8proc.combining_class(c) == 240 else "\u0345" + ch
        return all(nfkd.normalize_str(t) == t for t in ["a" + ch, "a" + beside])

    barriers = set()
    for c in CODE_POINTS[1:]:
        ch = chr(c)
        if utf8proc.combining_class(c) == 0 and utf8proc.form("NFKD", ch) == ch:
            continue
        if nfkd.normalize_str(ch) == utf8proc.form("NFKD", ch) and (
                utf8proc.combining_class(c) == 0 or not unknown_to_tokenizers(c)):
            continue  # the same decomposition, and a class tokenizers knows
        if not unknown_to_tokenizers(c):
            sys.exit(f"U+{c:04X}: tokenizers normalises it otherwise than utf8proc, but not as "
                     "an unassigned code point: a barrier cannot make the two equal")
        barriers.add(c)
    # Compositions tokenizers does not make: their second code point is a barrier too (one
    # with no class nor decomposition of its own, like U+0BBE, is not found above).
    for c in CODE_POINTS[1:]:
        pair = utf8proc.form("NFD", chr(c))
        if len(pair) != 2 or utf8proc.form("NFC", pair) != chr(c):
            continue
        if nfc.normalize_str(pair) != chr(c):
            if not unknown_to_tokenizers(ord(pair[1])):
                sys.exit(f"U+{c:04X}'s composition is unknown to tokenizers, but its second "
                         "code point is not")
            barriers.add(ord(pair[1]))
    return barriers


def check_normalization(utf8proc, barriers):
    """unicode_text.cpp's normalisation (utf8proc between the barriers, the barriers as they
    are) against tokenizers', in every form, on every code point utf8proc does not leave alone
    (with a mark of another class after it, its decompositions, with a mark after them) and
    every barrier: the barriers are derived above, this says they suffice."""
    from tokenizers import normalizers
    forms = {"NFC": normalizers.NFC(), "NFD": normalizers.NFD(), "NFKC": normalizers.NFKC(),
             "NFKD": normalizers.NFKD()}

    def emulated(form, text):
        out, segment = "", ""
        for ch in text:
            if ord(ch) in barriers:
                out += (utf8proc.form(form, segment) if segment else "") + ch
                segment = ""
            else:
                segment += ch
        return out + (utf8proc.form(form, segment) if segment else "")

    texts = []
    for c in CODE_POINTS[1:]:
        ch = chr(c)
        if c in barriers or utf8proc.combining_class(c) or utf8proc.form("NFKD", ch) != ch:
            for text in [ch, utf8proc.form("NFD", ch), utf8proc.form("NFKD", ch)]:
                texts += [text, "a" + text + "\u0316", text + "\u0301", "\u0345" + text + "e"]
    wrong = [(form, text) for text in dict.fromkeys(texts) for form, reference in forms.items()
             if emulated(form, text) != reference.normalize_str(text)]
    if wrong:
        sys.exit(f"{len(wrong)} normalisations differ from tokenizers', the first: {wrong[0]!r}")
    return len(texts)


def lowercase_delta(utf8proc):
    from tokenizers import normalizers
    lower = normalizers.Lowercase()
    return {c: lower.normalize_str(chr(c)) for c in CODE_POINTS
            if lower.normalize_str(chr(c)) != utf8proc.lowercase(c)}


def text_table():
    import tokenizers
    utf8proc = Utf8proc()
    barrier_points = normalization_barriers(utf8proc)
    check_normalization(utf8proc, barrier_points)
    barriers = ranges(barrier_points)
    lower = lowercase_delta(utf8proc)
    lines = [
        "// Generated by tools/make_unicode_tables.py; do not edit. Where utf8proc (Unicode "
        f"{utf8proc.unicode_version()}) and",
        f"// Hugging Face tokenizers {tokenizers.__version__} disagree (unicode_text.cpp).",
        "// The code points whose normalisation tokenizers does not know: it leaves them as "
        "unassigned ones.",
        "constexpr CodePointRange kNormalizationUnknown[] = {",
    ]
    lines += c_rows([f"{{0x{a:X}, 0x{b:X}}}" for a, b in barriers])
    lines.append("};")
    lines.append("// Rust's char::to_lowercase where utf8proc_tolower gives another code point.")
    lines.append("constexpr LowercaseException kLowercaseExceptions[] = {")

    def utf8_literal(text):
        return '"' + "".join(f"\\x{b:02X}" for b in text.encode()) + '"'
    lines += c_rows([f"{{0x{c:X}, {utf8_literal(t)}}}" for c, t in sorted(lower.items())])
    lines.append("};")
    return "\n".join(lines) + "\n"


def check_whitespace_words(reference):
    """tokenizers' Whitespace pre-tokenizer runs Rust's regex crate, not Oniguruma: its word
    class must be the one hf_text_steps.cpp spells with Oniguruma's tables, or the table does
    not serve it."""
    from tokenizers import pre_tokenizers
    whitespace = pre_tokenizers.Whitespace()
    words = {c for c in CODE_POINTS[1:]
             if whitespace.pre_tokenize_str("a" + chr(c))[0][0] == "a" + chr(c)}
    spelled = set().union(*(reference[n] for n in ["Alphabetic", "M", "Nd", "Pc", "Join_Control"]))
    if words != spelled - {0}:
        sys.exit("tokenizers' Whitespace pre-tokenizer has another word class than "
                 f"hf_text_steps.cpp's on {len(words ^ (spelled - {0}))} code points")


def class_text(ranges_):
    return "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges_)


def rust_class(name, members, spelled, oniguruma):
    """A pre-tokenizer that runs on Rust's own tables (Digits: char::is_numeric; Punctuation:
    the unicode_categories crate) as an Oniguruma class: `spelled` (its items, read with
    Oniguruma's tables, which is `oniguruma`) with the code points they lack added and those
    Rust's tables lack taken out."""
    add, remove = ranges(members - oniguruma), ranges(oniguruma - members)
    inner = "[" + spelled + class_text(add) + "]"
    text = inner if not remove else "(?:(?![" + class_text(remove) + "])" + inner + ")"
    return [f"// {name}: {len(members)} code points; {sum(b - a + 1 for a, b in add)} added to "
            f"{spelled}, {sum(b - a + 1 for a, b in remove)} taken out.",
            f"constexpr std::string_view k{name}Class ="] + [
                '    "' + text[i:i + 90].replace("\\", "\\\\") + '"'
                for i in range(0, len(text), 90)] + [
                "    ;"]


def table():
    import tokenizers
    from tokenizers import pre_tokenizers
    reference = tokenizers_sets()
    check_whitespace_words(reference)
    digits = pre_tokenizers.Digits(individual_digits=True)
    punctuation = pre_tokenizers.Punctuation()
    numeric = {c for c in CODE_POINTS[1:] if len(digits.pre_tokenize_str(f"a{chr(c)}a")) == 3}
    punct = {c for c in CODE_POINTS[1:]
             if len(punctuation.pre_tokenize_str(f"a{chr(c)}a")) == 3}
    ascii_punct = {c for c in range(0x21, 0x7F) if not chr(c).isalnum()}
    pcre2 = Pcre2()
    lines = [
        "// Generated by tools/make_unicode_tables.py; do not edit. Where PCRE2 (Unicode "
        f"{pcre2.unicode_version()})",
        f"// and Hugging Face tokenizers {tokenizers.__version__}'s Oniguruma disagree on a class, "
        "the code points they",
        "// disagree on (text_regex.cpp). Classes on which they agree are not listed.",
        f'constexpr std::string_view kDeltaPcre2UnicodeVersion = "{pcre2.unicode_version()}";',
    ]
    entries = []
    for name in CLASSES:
        differ = ranges(reference[name] ^ pcre2.members(pattern(name)))
        if not differ:
            continue
        symbol = "kDelta_" + name
        entries.append(f'{{"{name}", {symbol}}}')
        lines.append(f"constexpr CodePointRange {symbol}[] = {{")
        lines += c_rows([f"{{0x{a:X}, 0x{b:X}}}" for a, b in differ])
        lines.append("};")
    lines.append("constexpr ClassDelta kClassDeltas[] = {")
    lines += [f"    {e}," for e in entries]
    lines.append("};")
    lines += rust_class("RustNumeric", numeric, "\\p{N}", reference["N"])
    lines += rust_class("RustPunctuation", punct, "\\p{P}!-/:-@\\[-`{-~",
                        reference["P"] | ascii_punct)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    made = {OUT: table(), TEXT_OUT: text_table()}
    if args.check:
        stale = [str(path) for path, text in made.items() if path.read_text() != text]
        if stale:
            print(f"{', '.join(stale)}: not what the installed tokenizers, PCRE2 and utf8proc "
                  "give: rerun tools/make_unicode_tables.py")
            return 1
        print("the tables are what the installed stack gives")
        return 0
    for path, text in made.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
