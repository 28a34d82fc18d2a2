"""Retention: keeping the old domain while learning the new one (EMA weights, mean-teacher KL)."""
