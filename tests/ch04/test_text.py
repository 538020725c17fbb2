"""Chapter 4.5-4.6: Pride and Prejudice as character and word one-hots, and an embedding."""
import pytest
import torch

from ch04_data import text


def test_char_one_hot_maps_non_ascii_to_zero():
    onehot = text.char_one_hot("  “Hi” é\n")
    assert onehot.shape == (6, 128)                              # stripped: '“hi” é'
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(6))
    assert onehot.argmax(dim=1).tolist() == [0, ord("h"), ord("i"), 0, ord(" "), 0]


def test_clean_words_lowers_and_strips_punctuation():
    assert text.clean_words("“Impossible, Mr. Bennet!\n_Well_--") == \
        ["impossible", "mr", "bennet", "well"]


def test_word_one_hot_over_a_small_vocabulary():
    word2index = text.build_vocabulary("b a c. A b")
    assert word2index == {"a": 0, "b": 1, "c": 2}
    onehot = text.word_one_hot(["c", "a", "c"], word2index)
    assert onehot.shape == (3, 3) and onehot.argmax(dim=1).tolist() == [2, 0, 2]
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(3))


@pytest.fixture(scope="module")
def result(book_root):
    return text.main(["--data-dir", str(book_root(text.AUSTEN_TXT, "jane-austen"))])


@pytest.mark.realdata
def test_line_200_as_characters(result):
    assert result["line"].startswith("“Impossible, Mr. Bennet")
    letters = result["letters"]
    assert letters.shape == (70, 128)
    torch.testing.assert_close(letters.sum(dim=1), torch.ones(70))
    assert letters[0, 0] == 1 and letters[1, ord("i")] == 1      # the curly quote -> 0


@pytest.mark.realdata
def test_the_books_vocabulary_and_word_one_hot(result):
    assert len(result["word2index"]) == 7261
    assert result["word2index"]["impossible"] == 3394
    assert result["words_in_line"][:3] == ["impossible", "mr", "bennet"]
    words = result["words"]
    assert words.shape == (11, 7261) and result["words_batch"].shape == (11, 1, 7261)
    torch.testing.assert_close(words.sum(dim=1), torch.ones(11))
    assert words[0].argmax() == words[3].argmax() == 3394


@pytest.mark.realdata
def test_embedding_is_a_one_hot_matrix_product(result):
    assert result["vectors"].shape == (11, 8)
    with torch.no_grad():
        torch.testing.assert_close(result["words"] @ result["embedding"].weight,
                                   result["vectors"])
