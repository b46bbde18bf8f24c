"""Expected number of examples in one packed passkey sequence
(cli/passkey.c, --passkey-pack MIN), for tests/unit/test_passkey_mix.c.

The packer cuts T+1 ids into examples: while left >= 2 lo it draws
len = floor(lo * exp(u * ln(left / lo))), u ~ U[0, 1), lifts len to lo,
and takes the whole rest when left - len < lo; otherwise the rest is one
example. E(left) = 1 + E[E(left - len)] with E(0) = 0, solved exactly over
the integers by dynamic programming (u integrated numerically per integer
len: P(len = k) = measure of u giving floor(...) = k).

    python3 tests/reference/passkey_pack_count.py   # prints E for the test's case
"""
import math


def expected_count(total, lo):
    E = [0.0] * (total + 1)
    for left in range(1, total + 1):
        if left < 2 * lo:
            E[left] = 1.0
            continue
        r = math.log(left / lo)
        acc = 0.0
        # floor(lo * exp(u r)) = k for u in [ln(k/lo)/r, ln((k+1)/lo)/r)
        for k in range(lo, left + 1):
            a = max(0.0, math.log(k / lo) / r)
            b = min(1.0, math.log((k + 1) / lo) / r)
            if b <= a:
                continue
            length = k if left - k >= lo else left
            acc += (b - a) * E[left - length]
        E[left] = 1.0 + acc
    return E[total]


if __name__ == "__main__":
    print("T+1 = 4096, MIN = 128: expected examples per sequence %.4f" % expected_count(4096, 128))
