import torch

from lstmkit.lm.batching import batch_rows, bptt_windows, epoch_size


def test_rows_and_windows_match_the_hand_worked_example():
    # The picture in lstmkit/data/batching.py: 30 tokens, batch 3, num_steps 4.
    rows = batch_rows(torch.arange(30), 3)
    assert rows.tolist() == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    windows = list(bptt_windows(rows, 4))
    assert epoch_size(30, 3, 4) == len(windows) == 2
    x0, y0 = windows[0]
    assert x0.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]
    assert y0.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14], [21, 22, 23, 24]]
    x1, y1 = windows[1]
    assert x1.tolist() == [[4, 5, 6, 7], [14, 15, 16, 17], [24, 25, 26, 27]]
    assert y1.tolist() == [[5, 6, 7, 8], [15, 16, 17, 18], [25, 26, 27, 28]]


def test_tail_window_covers_the_remaining_targets():
    rows = batch_rows(torch.arange(30), 3)
    *_, (x, y) = bptt_windows(rows, 4, include_tail=True)
    assert x.tolist() == [[8], [18], [28]] and y.tolist() == [[9], [19], [29]]


def test_leftover_tokens_that_do_not_fill_a_row_are_dropped():
    rows = batch_rows(torch.arange(32), 3)
    assert rows.shape == (3, 10) and rows[-1, -1].item() == 29


def test_start_skips_windows_already_done():
    rows = batch_rows(torch.arange(30), 3)
    assert [x.tolist() for x, _ in bptt_windows(rows, 4, start=1)] == [
        [[4, 5, 6, 7], [14, 15, 16, 17], [24, 25, 26, 27]]]


def test_every_target_is_counted_once_with_batch_one_and_tail():
    rows = batch_rows(torch.arange(23), 1)
    targets = torch.cat([y.flatten() for _, y in bptt_windows(rows, 5, include_tail=True)])
    assert targets.tolist() == list(range(1, 23))
