"""Prints each test that ctest reported as skipped, with the reason the test gave (ctest shows
only the word "Skipped"): gtest's GTEST_SKIP message, or the "skipped: ..." line a script
prints before it exits with the skip code 77 (which LastTest.log files as passed).
Usage: python3 tools/ctest_skips.py build/Testing/Temporary/LastTest.log"""
import re
import sys


def main(path):
    text = open(path, errors="replace").read()
    blocks = re.split(r"\n(?=\d+/\d+ Testing: )", text)
    for block in blocks:
        head = re.match(r"\d+/\d+ Testing: (.+)", block)
        if not head:
            continue
        output = block.split("Output:", 1)[-1].split("<end of output>", 1)[0]
        lines = [line.strip() for line in output.splitlines()]
        said_skipped = any(line.lower().startswith("skipped:") for line in lines)
        if not said_skipped and not re.search(r"Skip (regular expression found|return code)|\bSkipped\b", block):
            continue
        reason = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith(": Skipped")), None)
        reason = reason or next((line[len("skipped:"):].strip() for line in lines if line.lower().startswith("skipped:")),
                                "(no reason given)")
        print(f"skipped: {head.group(1)}: {reason}")


if __name__ == "__main__":
    main(sys.argv[1])
