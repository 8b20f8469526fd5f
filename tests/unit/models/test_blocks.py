import numpy as np
import pytest

from models.blocks import BLOCK_ROWS, RowBlocks


def test_round_trip_and_row_access():
    array = np.arange(3 * BLOCK_ROWS + 5, dtype=np.float32).reshape(-1, 1) * [1, 2]
    blocks = RowBlocks.from_array(array.astype(np.float32))
    assert len(blocks) == len(array) and blocks.shape == array.shape and blocks.ndim == 2
    np.testing.assert_array_equal(blocks.to_array(), array)
    np.testing.assert_array_equal(blocks.row(BLOCK_ROWS + 3), array[BLOCK_ROWS + 3])
    rows = np.array([0, len(array) - 1, 5, BLOCK_ROWS * 2])
    np.testing.assert_array_equal(blocks.take(rows), array[rows])
    with pytest.raises(IndexError):
        blocks.row(len(array))
    with pytest.raises(IndexError):
        blocks.take(np.array([-1]))


def test_rows_are_read_only():
    blocks = RowBlocks.from_array(np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        blocks.row(2)[0] = 1.0
    taken = blocks.take(np.array([1]))
    taken[:] = 7  # a copy: the blocks are unaffected
    assert blocks.row(1).sum() == 0


def test_adopt_wraps_a_filled_buffer_without_copying_it():
    n = 2 * BLOCK_ROWS + 3
    whole = RowBlocks.buffer(n, (2,), np.dtype(np.float32))
    assert whole.shape == (3 * BLOCK_ROWS, 2) and not whole.any()
    whole[:n] = np.arange(2 * n).reshape(n, 2)
    blocks = RowBlocks.adopt(whole, n)
    assert np.shares_memory(blocks.row(n - 1), whole) and not whole.flags.writeable
    np.testing.assert_array_equal(blocks.to_array(), whole[:n])
    with pytest.raises(ValueError, match="whole blocks"):
        RowBlocks.adopt(np.zeros((n, 2), dtype=np.float32), n)


def test_update_copies_only_touched_blocks_and_leaves_the_original():
    n = 10 * BLOCK_ROWS
    before = RowBlocks.from_array(np.zeros(n, dtype=np.int64))
    rows = np.array([3, 4, 5 * BLOCK_ROWS + 1])
    after = before.updated(rows, np.array([7, 8, 9]))
    assert after.shared_blocks(before) == 10 - 2  # blocks 0 and 5 were copied
    assert before.to_array().sum() == 0
    expected = np.zeros(n, dtype=np.int64)
    expected[rows] = [7, 8, 9]
    np.testing.assert_array_equal(after.to_array(), expected)


def test_update_grows_with_new_rows_zero_unless_set():
    before = RowBlocks.from_array(np.ones((BLOCK_ROWS - 1, 2), dtype=np.float32))
    after = before.updated(np.array([BLOCK_ROWS + 2]), np.full((1, 2), 5.0), n=BLOCK_ROWS + 10)
    array = after.to_array()
    assert array.shape == (BLOCK_ROWS + 10, 2)
    np.testing.assert_array_equal(array[: BLOCK_ROWS - 1], 1.0)
    np.testing.assert_array_equal(array[BLOCK_ROWS - 1 : BLOCK_ROWS + 2], 0.0)
    np.testing.assert_array_equal(array[BLOCK_ROWS + 2], 5.0)
    assert len(before) == BLOCK_ROWS - 1


def test_update_refuses_bad_input():
    blocks = RowBlocks.from_array(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="shrink"):
        blocks.updated(np.array([0]), np.array([1.0]), n=3)
    with pytest.raises(ValueError, match="shape"):
        blocks.updated(np.array([0, 1]), np.array([1.0]))
    with pytest.raises(IndexError):
        blocks.updated(np.array([5]), np.array([1.0]))


def test_empty_grows_from_nothing():
    empty = RowBlocks.empty((4,), np.dtype(np.float32))
    assert len(empty) == 0 and empty.to_array().shape == (0, 4)
    grown = empty.updated(np.array([0, 1]), np.ones((2, 4)), n=2)
    np.testing.assert_array_equal(grown.to_array(), np.ones((2, 4)))


def test_an_update_of_no_rows_shares_everything():
    before = RowBlocks.from_array(np.ones((10 * BLOCK_ROWS, 2), dtype=np.float32))
    after = before.updated(np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
    assert after.shared_blocks(before) == 10 and len(after) == len(before)
    grown = before.updated(np.zeros(0, dtype=np.int64), np.zeros((0, 2)), n=11 * BLOCK_ROWS)
    np.testing.assert_array_equal(grown.to_array()[10 * BLOCK_ROWS :], 0.0)
