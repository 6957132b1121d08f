"""RNN-T parts: the loss equals the brute-force sum over every alignment (value and gradients), batches of
different lengths equal their utterances one by one, and greedy decoding in chunks equals offline."""
import itertools
import math

import pytest
import torch

from convformer.asr.transducer import (GreedyTransducerDecoder, JointNetwork, PredictionNetwork,
                                       greedy_transducer_decode, rnnt_loss)
from convformer.errors import ConvformerError


def brute_force_nll(log_probs: torch.Tensor, targets: list[int], t_len: int) -> torch.Tensor:
    """-log of the sum over all alignments: every order of (T - 1) blank moves and U emissions through the
    T x (U + 1) lattice, then the final blank at (T - 1, U)."""
    u_len, blank = len(targets), log_probs.shape[-1] - 1
    paths = []
    for emits in itertools.combinations(range(t_len - 1 + u_len), u_len):
        t = u = 0
        score = log_probs.new_zeros(())
        for move in range(t_len - 1 + u_len):
            if move in emits:
                score = score + log_probs[t, u, targets[u]]
                u += 1
            else:
                score = score + log_probs[t, u, blank]
                t += 1
        paths.append(score + log_probs[t_len - 1, u_len, blank])
    return -torch.logsumexp(torch.stack(paths), 0)


@pytest.mark.parametrize("t_len,targets", [(1, []), (1, [2]), (3, [1]), (4, [0, 2]), (5, [1, 1, 2]), (2, [2, 0, 1])])
def test_loss_and_gradients_equal_the_sum_over_all_alignments(t_len, targets):
    g = torch.Generator().manual_seed(t_len * 10 + len(targets))
    logits = torch.randn(1, t_len, len(targets) + 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lp = logits.log_softmax(-1)
    ours = rnnt_loss(lp, torch.tensor([targets or [0]]), torch.tensor([t_len]), torch.tensor([len(targets)]),
                     reduction="none")[0]
    ref = brute_force_nll(lp[0], targets, t_len)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-10)
    (g_ours,) = torch.autograd.grad(ours, logits, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-10) and torch.isfinite(g_ours).all()


def test_a_padded_batch_equals_its_utterances_one_by_one_in_fp32():
    g = torch.Generator().manual_seed(0)
    t_lens, u_lens = [6, 3, 5], [2, 3, 0]
    logits = torch.randn(3, 6, 4, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 5, (3, 3), generator=g)
    losses = rnnt_loss(logits.log_softmax(-1), targets, torch.tensor(t_lens), torch.tensor(u_lens), reduction="none")
    for i, (t, u) in enumerate(zip(t_lens, u_lens)):
        alone = rnnt_loss(logits[i:i + 1, :t, :u + 1].log_softmax(-1), targets[i:i + 1, :max(u, 1)],
                          torch.tensor([t]), torch.tensor([u]), reduction="none")[0]
        assert losses[i].item() == pytest.approx(alone.item(), rel=1e-6)
    losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1, 3:].abs().max() == 0  # padding frames get no gradient


def test_reductions_and_bad_shapes():
    lp = torch.randn(2, 3, 3, 4).log_softmax(-1)
    args = (torch.tensor([[0, 1], [2, 0]]), torch.tensor([3, 2]), torch.tensor([2, 1]))
    none = rnnt_loss(lp, *args, reduction="none")
    assert rnnt_loss(lp, *args, reduction="sum").item() == pytest.approx(none.sum().item())
    assert rnnt_loss(lp, *args, reduction="mean_batch").item() == pytest.approx(none.mean().item())
    assert rnnt_loss(lp, *args).item() == pytest.approx((none / torch.tensor([2.0, 1.0])).mean().item())
    with pytest.raises(ConvformerError, match="exceed"):
        rnnt_loss(lp, args[0], torch.tensor([4, 2]), args[2])


def _parts(seed=0, vocab=5):
    torch.manual_seed(seed)
    pred, joint = PredictionNetwork(vocab, hidden=16), JointNetwork(8, 16, 12, vocab)
    with torch.no_grad():  # a joint that emits now and then, so decoding is non-trivial
        joint.net[-1].bias[-1] -= 1.0
    return pred.eval(), joint.eval()


def test_shapes_follow_nemo():
    pred, joint = _parts()
    out, _ = pred(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 4, 16) and pred.embedding.weight.shape == (6, 16)
    assert torch.equal(pred.embedding.weight[5], torch.zeros(16))  # the blank (start) embeds to zero
    assert joint(torch.randn(1, 7, 8), out).shape == (1, 7, 4, 6)


def test_streaming_greedy_across_chunks_equals_offline():
    pred, joint = _parts()
    frames, lengths = torch.randn(3, 20, 8), torch.tensor([20, 13, 7])
    offline = greedy_transducer_decode(pred, joint, frames, lengths)
    assert sum(map(len, offline)) > 3  # something was emitted
    for chunk in (1, 4, 7):
        stream = GreedyTransducerDecoder(pred, joint, 3)
        for start in range(0, 20, chunk):
            stream.feed(frames[:, start:start + chunk], (lengths - start).clamp(0, chunk))
        assert stream.tokens == offline, chunk


def test_greedy_decode_follows_the_joint_argmax_frame_by_frame():
    """One utterance decoded by hand: at each frame emit argmax while it is not the blank."""
    pred, joint = _parts(seed=3)
    frames = torch.randn(1, 12, 8)
    tokens, state = [], None
    g, state = pred.step(torch.tensor([5]))
    with torch.no_grad():
        for t in range(12):
            for _ in range(10):
                k = int(joint.step(frames[:, t], g).argmax())
                if k == 5:
                    break
                tokens.append(k)
                g, state = pred.step(torch.tensor([k]), state)
    assert greedy_transducer_decode(pred, joint, frames) == [tokens]
    assert math.isfinite(len(tokens))


def test_streams_at_different_positions_share_a_decoder_batch():
    """A stream that joins two chunks late, and one that ends early, decode in one batch exactly as alone."""
    pred, joint = _parts(seed=1)
    a, b = torch.randn(1, 16, 8), torch.randn(1, 10, 8)
    alone = [greedy_transducer_decode(pred, joint, a)[0], greedy_transducer_decode(pred, joint, b)[0]]
    assert all(alone)
    chunk, late = 4, 8                       # b's first frame arrives with a's ninth
    frames = torch.zeros(2, 20, 8)
    frames[0, :16], frames[1, late:late + 10] = a[0], b[0]
    valid = torch.zeros(2, 20, dtype=torch.bool)
    valid[0, :16], valid[1, late:late + 10] = True, True
    shared = GreedyTransducerDecoder(pred, joint, 2)
    for start in range(0, 20, chunk):
        shared.feed(frames[:, start:start + chunk], valid[:, start:start + chunk])
    assert shared.tokens == alone
