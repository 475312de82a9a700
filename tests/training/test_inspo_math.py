"""The pieces of InSPO that are easy to get subtly wrong, checked against brute force."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from training.algos.base import td_target
from training.algos.inspo import (
    closed_form_log_weight,
    closed_form_policy,
    prefix_log_ratios,
    random_permutations,
)
from training.nets import Policy, masked_log_softmax


def brute_force_policy(q, mu, alpha, beta):
    """argmax over the simplex of Σ π(a)(Q(a) − α log(π/μ) − β log π), by numerical optimisation."""

    def neg(z):
        p = np.exp(z - z.max())
        p /= p.sum()
        return -np.sum(p * (q - alpha * np.log(p / mu) - beta * np.log(p)))

    best = min(
        (
            minimize(neg, z0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})
            for z0 in [np.zeros(len(q)), np.log(mu)]
        ),
        key=lambda r: r.fun,
    )
    p = np.exp(best.x - best.x.max())
    return p / p.sum()


def test_closed_form_matches_brute_force_on_tabular_cases():
    rng = np.random.default_rng(0)
    for alpha, beta in [(0.5, 0.5), (1.0, 0.0), (0.2, 1.0)]:
        q = rng.normal(size=4)
        mu = rng.dirichlet(np.ones(4))
        got = closed_form_policy(torch.tensor(q), torch.tensor(np.log(mu)), alpha, beta).numpy()
        want = brute_force_policy(q, mu, alpha, beta)
        assert np.allclose(got, want, atol=2e-4), (alpha, beta, got, want)


def test_beta_raises_mass_on_rare_behaviour_actions():
    q = torch.tensor([1.0, 0.5])  # the rare action is better
    log_mu = torch.log(torch.tensor([0.05, 0.95]))
    no_entropy = closed_form_policy(q, log_mu, 1.0, 0.0)[0]
    entropy = closed_form_policy(q, log_mu, 1.0, 1.0)[0]
    assert entropy > no_entropy


def test_closed_form_weight_is_ratio_to_mu_and_ignores_illegal_actions():
    q = torch.tensor([[0.3, -0.2, 5.0]])
    log_mu = torch.log(torch.tensor([[0.6, 0.4, 1e-9]]))
    legal = torch.tensor([[True, True, False]])
    logw = closed_form_log_weight(q, log_mu, torch.tensor([0]), legal, 0.5, 0.5)
    pi = closed_form_policy(q[:, :2], log_mu[:, :2], 0.5, 0.5)
    assert torch.allclose(logw.exp(), pi[:, 0] / 0.6, atol=1e-6)


def test_prefix_ratio_products_under_a_permutation_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    b, n = 6, 5
    log_ratio = torch.randn(b, n, generator=gen)
    mask = torch.rand(b, n, generator=gen) > 0.3
    perm = random_permutations(mask, gen)
    got = prefix_log_ratios(log_ratio, perm, mask)
    for s in range(b):
        order = perm[s].tolist()
        assert sorted(order) == list(range(n))
        # Absent agents come last, so present agents only ever follow present agents.
        present = [i for i in order if mask[s, i]]
        assert order[: len(present)] == present
        for pos, agent in enumerate(order):
            want = 1.0
            for before in order[:pos]:
                if mask[s, before]:
                    want *= math.exp(log_ratio[s, before].item())
            assert abs(math.exp(got[s, agent].item()) - want) < 1e-4 * max(1.0, want)


def test_permutations_cover_all_orders():
    gen = torch.Generator().manual_seed(1)
    perms = random_permutations(torch.ones(3000, 3, dtype=torch.bool), gen)
    seen = {tuple(p) for p in perms.tolist()}
    assert seen == set(itertools.permutations(range(3)))


def test_masking_gives_illegal_actions_zero_probability():
    logits = torch.tensor([[[5.0, 1.0, 9.0]]])
    legal = torch.tensor([[[True, True, False]]])
    p = masked_log_softmax(logits, legal).exp()
    assert p[0, 0, 2] == 0.0 and torch.isclose(p.sum(), torch.tensor(1.0))
    pol = Policy(n_agents=2, obs_dim=3, n_actions=4)
    legal2 = torch.tensor([[[True, False, True, False], [False, False, False, True]]])
    probs = pol(torch.randn(1, 2, 3), legal2).exp()
    assert torch.all(probs[~legal2] == 0.0)
    assert probs[0, 1, 3] == 1.0  # a single legal action (a done agent) is certain


def test_td_target_terminal_and_truncated():
    r = torch.tensor([1.0, 1.0, 1.0])
    term = torch.tensor([True, False, False])  # terminated; truncated (not terminated); ordinary
    v_next = torch.tensor([10.0, 10.0, 10.0])
    y = td_target(r, 0.9, term, v_next)
    assert torch.allclose(y, torch.tensor([1.0, 10.0, 10.0]))


def test_normaliser_runs_over_the_behaviour_support_only():
    # Action 2 is (almost) never taken by μ̂; the local critic's value there is an extrapolation.
    q = torch.tensor([[0.3, -0.2, 1.0]])
    log_mu = torch.log(torch.tensor([[0.6, 0.4 - 1e-4, 1e-4]]))
    legal = torch.ones(1, 3, dtype=torch.bool)
    act = torch.tensor([0])
    restricted = closed_form_policy(q[:, :2], log_mu[:, :2], 0.05, 0.05)
    in_support = closed_form_log_weight(q, log_mu, act, legal, 0.05, 0.05, support_threshold=0.01).exp()
    assert torch.allclose(in_support, restricted[:, 0] / 0.6, atol=1e-5)
    # Over every legal action the extrapolated value takes nearly all of π*, so the logged actions'
    # weights (and with them this state's share of the weighted-ML loss) vanish.
    everywhere = closed_form_log_weight(q, log_mu, act, legal, 0.05, 0.05).exp()
    assert everywhere < 0.1 * in_support
    # A logged action outside the support gets weight 0; the threshold is relative to the mode of μ̂.
    outside = closed_form_log_weight(q, log_mu, torch.tensor([2]), legal, 0.05, 0.05, support_threshold=0.01).exp()
    assert outside.item() == 0.0
    scaled = torch.log(torch.tensor([[0.6, 0.4 - 0.005, 0.005]]))  # 0.005 / 0.6 ≥ 0.001: inside
    inside = closed_form_log_weight(q, scaled, torch.tensor([2]), legal, 0.05, 0.05, support_threshold=0.001).exp()
    assert inside.item() > 0.0


def _ab_ba_batch(n: int = 256) -> dict[str, torch.Tensor]:
    """One state, two agents, joint actions (0, 1) and (1, 0) only: μ^2(1) = 0.5 but μ^2(1 | a^1 = 0) = 1."""
    first = torch.arange(n) % 2
    actions = torch.stack([first, 1 - first], dim=1)
    return {
        "obs": torch.zeros(n, 2, 3),
        "legal": torch.ones(n, 2, 2, dtype=torch.bool),
        "actions": actions,
        "agent_mask": torch.ones(n, 2, dtype=torch.bool),
    }


def test_conditional_behaviour_model_learns_teammate_action_given_own_action():
    from training.algos.base import DataInfo
    from training.algos.inspo import InSPO, InSPOConfig

    torch.manual_seed(0)
    info = DataInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=3, gamma=0.9)
    algo = InSPO(InSPOConfig(conditional_behaviour=True), info, torch.Generator().manual_seed(0))
    b = _ab_ba_batch()
    for _ in range(200):
        algo._cond_bc_step(b)
        algo._bc_step(b)
    with torch.no_grad():
        given_1 = algo._cond_log_mu(b, 0)[:, 1].exp()  # μ̂^2(a^2 | s, a^1) at the logged pair
        given_2 = algo._cond_log_mu(b, 1)[:, 0].exp()
        marginal = algo.mu(b["obs"], b["legal"]).exp()
    assert given_1.min() > 0.95 and given_2.min() > 0.95
    assert torch.allclose(marginal, torch.full_like(marginal, 0.5), atol=0.05)
    # Agent 1's action is the only input that differs between the two kinds of sample: the conditional
    # probability of agent 2's *other* action is small (it would be 0.5 under the marginal of A1).
    flipped = dict(b, actions=torch.stack([b["actions"][:, 0], b["actions"][:, 0]], dim=1))
    with torch.no_grad():
        other = algo._cond_log_mu(flipped, 0)[:, 1].exp()
    assert other.max() < 0.05


def test_expected_target_sums_over_the_teammates_logged_actions_only():
    """A10: y^i = Σ_{a^j in supp μ̂^j(·|s,a^i)} π^j(a^j|s)(Q̄ − V + κ) − κ; unlogged joint actions count −κ."""
    from training.algos.base import DataInfo
    from training.algos.inspo import InSPO, InSPOConfig

    torch.manual_seed(0)
    info = DataInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=3, gamma=0.9)
    algo = InSPO(
        InSPOConfig(conditional_behaviour=True, teammate_expectation=True), info, torch.Generator().manual_seed(0)
    )
    b = _ab_ba_batch()
    b["state"] = b["obs"][:, 0]
    for _ in range(200):
        algo._cond_bc_step(b)
    with torch.no_grad():
        adv = algo.q_targ(b["state"], b["actions"], b["agent_mask"]) - algo.v(b["state"])
        y = algo._expected_target(b, 0, adv)
        pi2 = algo.pi.forward_agent(1, b["obs"], b["legal"]).exp()
        a1 = b["actions"][:, 0]
        partner = 1 - a1  # the only teammate action logged with a1
        joint = torch.stack([a1, partner], dim=1)
        a_logged = algo.q_targ(b["state"], joint, b["agent_mask"]) - algo.v(b["state"])
        want = pi2.gather(1, partner[:, None]).squeeze(1) * (a_logged + 1.0) - 1.0
    assert torch.allclose(y, want, atol=1e-5)


def test_conditional_ratios_by_default_marginal_when_off_or_with_parameter_sharing():
    from training.algos.base import DataInfo
    from training.algos.inspo import InSPO, InSPOConfig

    info = DataInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=3, gamma=0.9)
    assert "mu_cond" in InSPO(InSPOConfig(), info, torch.Generator().manual_seed(0)).modules
    for cfg in [InSPOConfig(shared=True), InSPOConfig(conditional_behaviour=False)]:
        algo = InSPO(cfg, info, torch.Generator().manual_seed(0))
        assert "mu_cond" not in algo.modules


def test_entropy_weight_anneals_linearly_from_the_end_of_warm_up():
    """A11: β = beta_start until π starts, then linear to beta over beta_anneal_steps; constant without them."""
    from training.algos.base import DataInfo
    from training.algos.inspo import InSPO, InSPOConfig

    info = DataInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=3, gamma=0.9)
    cfg = InSPOConfig(beta=0.1, beta_start=0.9, beta_anneal_steps=400, warmup_steps=100)
    algo = InSPO(cfg, info, torch.Generator().manual_seed(0))
    got = [algo.beta_at(s) for s in (0, 100, 200, 300, 500, 10_000)]
    assert got == pytest.approx([0.9, 0.9, 0.7, 0.5, 0.1, 0.1])
    flat = InSPO(InSPOConfig(beta=0.1, beta_start=0.9, beta_anneal_steps=0), info, torch.Generator().manual_seed(0))
    assert {flat.beta_at(s) for s in (0, 300, 10_000)} == {0.1}
