"""Chapter 4.5-4.6: text as tensors, Pride and Prejudice.  python ch04_data/text.py

One-hot encodes line 200 of the book character by character (ASCII, 128 columns) and word
by word (a vocabulary of every cleaned word in the novel), then shows the alternative the
chapter ends on: an `nn.Embedding` that maps each word index to a short dense vector.
"""
import argparse

import torch
from torch import nn

from ch01_intro.preprocess import read_text as read_utf8
from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli

AUSTEN_TXT = "p1ch4/jane-austen/1342-0.txt"
LINE = 200
PUNCTUATION = '.,;:"!?”“_-'


LOOKED_UP = "impossible"    # the word whose index the book prints


def read_text(path):
    """The whole novel as one string (utf-8; the file's byte-order mark stays, as in the book)."""
    return read_utf8(path, "text")


def char_one_hot(line):
    """(len, 128) one-hot rows, one per character; non-ASCII characters map to index 0."""
    line = line.lower().strip()
    onehot = torch.zeros(len(line), 128)
    for i, char in enumerate(line):
        onehot[i, ord(char) if ord(char) < 128 else 0] = 1
    return onehot


def clean_words(text):
    """Lower-case words split on whitespace, with punctuation stripped from both ends."""
    return [word.strip(PUNCTUATION) for word in text.lower().replace("\n", " ").split()]


def build_vocabulary(text):
    """word -> index over the sorted set of every cleaned word in the text."""
    return {word: i for i, word in enumerate(sorted(set(clean_words(text))))}


def word_one_hot(words, word2index):
    """(len(words), vocabulary size) one-hot rows."""
    onehot = torch.zeros(len(words), len(word2index))
    for i, word in enumerate(words):
        onehot[i, word2index[word]] = 1
    return onehot


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--embedding-dim", type=int, default=8, help="size of the embedding demo")
    p.add_argument("--seed", type=int, default=0, help="seed for the embedding's random init")
    args = p.parse_args(argv)

    path = book_file(AUSTEN_TXT, args.data_dir, name="jane-austen")
    text = read_text(path)
    lines = text.split("\n")
    if len(lines) <= LINE:
        raise DataError(f"text {path}: only {len(lines)} lines, the book shows line {LINE}")
    line = lines[LINE]
    if not clean_words(line):
        raise DataError(f"text {path}: line {LINE} holds no words, the book encodes its words")
    print(f"line {LINE}: {line!r}")
    letters = char_one_hot(line)
    print(f"character one-hot {tuple(letters.shape)}")

    words_in_line = clean_words(line)
    print(f"cleaned words: {words_in_line}")
    word2index = build_vocabulary(text)
    if LOOKED_UP not in word2index:
        raise DataError(f"text {path}: the word {LOOKED_UP!r} the book looks up is not in it "
                        "(not Pride and Prejudice?)")
    print(f"vocabulary: {len(word2index)} words, {LOOKED_UP!r} -> {word2index[LOOKED_UP]}")
    words = word_one_hot(words_in_line, word2index)
    for i, word in enumerate(words_in_line):
        print(f"{i:2} {word2index[word]:4} {word}")
    words_batch = words.unsqueeze(1)     # (words, 1, vocabulary): one word per time step
    print(f"word one-hot {tuple(words.shape)} -> unsqueeze(1) {tuple(words_batch.shape)}")

    # 4.6: instead of 7,261-wide one-hot rows, a lookup table of small learnable vectors.
    # A one-hot row times the embedding's weight matrix picks the same row.
    torch.manual_seed(args.seed)
    embedding = nn.Embedding(len(word2index), args.embedding_dim)
    indices = torch.tensor([word2index[w] for w in words_in_line])
    with torch.no_grad():
        vectors = embedding(indices)                         # (11, embedding_dim)
        same = torch.allclose(words @ embedding.weight, vectors)
    print(f"embedding of the line: {tuple(vectors.shape)} "
          f"({len(word2index)} x {args.embedding_dim} table; one-hot @ weight agrees: {same})")
    return {"line": line, "letters": letters, "words_in_line": words_in_line,
            "word2index": word2index, "words": words, "words_batch": words_batch,
            "embedding": embedding, "vectors": vectors}


if __name__ == "__main__":
    run_cli(main)
