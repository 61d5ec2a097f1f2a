import re

WORD = re.compile(r"[a-z']+")


def normalise(line):
    """The words of a line, lower-cased, punctuation dropped."""
    return WORD.findall(line.lower())
