"""procure.market: buyers, sellers, flat-rate (fairshare) and royalty contracts, multi-period dynamics, and
collaborative payoff allocation (seeds/003). Numbers in, numbers out: no LLMs here.

Pipeline entry point (stable)::

    from procure.market.round import clear_round, royalty_payouts, stay_probability
    clear_round(values, budget, "fairshare" | "royalty", costs=..., bundle_utility=..., mapping=...,
                max_rate=0.5, price_floor=0.0) -> RoundOutcome

Collaborative allocation::

    from procure.market.collaborative import allocate
    allocate(values, budgets) -> Allocation  # .shapley .flows .lam .payoffs .model_rewards
"""
