"""Prints each test that ctest reported as skipped, with the reason the test gave (ctest shows
only the word "Skipped"). Usage: python3 tools/ctest_skips.py build/Testing/Temporary/LastTest.log"""
import re
import sys


def main(path):
    text = open(path, errors="replace").read()
    blocks = re.split(r"\n(?=\d+/\d+ Testing: )", text)
    for block in blocks:
        head = re.match(r"\d+/\d+ Testing: (.+)", block)
        if not head or not re.search(r"Skip (regular expression found|return code)|\bSkipped\b", block):
            continue
        output = block.split("Output:", 1)[-1].split("<end of output>", 1)[0]
        lines = [line.strip() for line in output.splitlines()]
        reason = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith(": Skipped")), None)
        reason = reason or next((line for line in lines if line.lower().startswith("skipped")), "(no reason given)")
        print(f"skipped: {head.group(1)}: {reason}")


if __name__ == "__main__":
    main(sys.argv[1])
