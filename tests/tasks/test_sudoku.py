"""Sudoku task: parsing, validation, the exact solver, both generators, augmentation, splits, CSV."""
import hashlib
import random

import pytest

from adaptive_lm.errors import UsageError
from adaptive_lm.tasks import sudoku as S

# The Wikipedia example: a unique puzzle that naked + hidden singles solve.
WIKI_P = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
WIKI_S = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
# "AI Escargot": unique, but singles get stuck and the search must guess.
ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


def _swap(grid: str, i: int, j: int) -> str:
    g = list(grid)
    g[i], g[j] = g[j], g[i]
    return "".join(g)


def _relabel(grid: str, perm: str) -> str:
    table = dict(zip(S.DIGITS, perm))
    return "".join(table.get(ch, ch) for ch in grid)


def _deadly_rectangle(sol: str):
    """Four cells (r1,c1),(r1,c2),(r2,c1),(r2,c2) spanning exactly two boxes with digits a,b,b,a."""
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    cells = [r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2]
                    if len({S.BOX[i] for i in cells}) != 2:
                        continue
                    a, b, c, d = (sol[i] for i in cells)
                    if a == d and b == c:
                        return cells
    return None


@pytest.fixture(scope="module")
def gen_a():
    return {seed: S.generate(seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def gen_b():
    return {seed: S.generate_symmetric(seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def multi():
    """(solution, puzzle with exactly two solutions) from a deadly pattern in a full grid."""
    for k in range(50):
        sol = WIKI_S if k == 0 else S.random_full_grid(random.Random(k))
        cells = _deadly_rectangle(sol)
        if cells:
            puz = "".join("." if i in cells else ch for i, ch in enumerate(sol))
            other = list(sol)
            other[cells[0]], other[cells[1]] = sol[cells[1]], sol[cells[0]]
            other[cells[2]], other[cells[3]] = sol[cells[3]], sol[cells[2]]
            return sol, puz, "".join(other)
    pytest.fail("no deadly rectangle found in 50 full grids")


UNSOLVABLE = "12345678." + "." * 71 + "9"        # r1c9 must be 9, but column 9 already holds a 9


# ---------------------------------------------------------------- parse and errors

def test_sudoku_error_is_a_usage_error():
    assert issubclass(S.SudokuError, UsageError)
    assert S.SudokuError.exit_code == 2


def test_parse_normalises_blanks_and_ignores_layout_characters():
    assert S.parse(WIKI_P) == WIKI_P
    assert S.parse(WIKI_P.replace(".", "0")) == WIKI_P
    assert S.parse("0" * 81) == "." * 81
    spaced = "\n".join(" | ".join(WIKI_P[r * 9 + s * 3:r * 9 + s * 3 + 3] for s in range(3)) for r in range(9))
    assert S.parse("  " + spaced + "\n-----+-----\r\n\t") == WIKI_P
    assert S.parse(S.pretty(WIKI_P)) == WIKI_P
    assert S.parse(S.pretty(WIKI_S)) == WIKI_S


@pytest.mark.parametrize("text, fragment", [
    (WIKI_P[:-1], "this one has 80"),
    (WIKI_P + "1", "this one has 82"),
    ("", "this one has 0"),
    ("x" + WIKI_P[1:], "'x'"),
    ("a" + WIKI_P[2:] + "z", "'az'"),
    ("*" * 81, "'*'"),
])
def test_parse_rejects_wrong_length_and_illegal_characters(text, fragment):
    with pytest.raises(S.SudokuError) as e:
        S.parse(text)
    assert fragment in str(e.value)


@pytest.mark.parametrize("cells, message", [
    ((0, 1), "contradictory givens: 5 at r1c1 and r1c2"),      # row
    ((0, 72), "contradictory givens: 5 at r1c1 and r9c1"),     # column
    ((0, 20), "contradictory givens: 5 at r1c1 and r3c3"),     # box
    ((40, 44), "contradictory givens: 5 at r5c5 and r5c9"),
])
def test_parse_rejects_contradictory_givens_naming_the_cells(cells, message):
    g = ["."] * 81
    for i in cells:
        g[i] = "5"
    with pytest.raises(S.SudokuError) as e:
        S.parse("".join(g))
    assert str(e.value) == message


def test_parse_accepts_a_puzzle_without_a_solution_when_givens_do_not_clash():
    assert S.parse(UNSOLVABLE) == UNSOLVABLE


# ---------------------------------------------------------------- validator

def test_is_solution_on_hand_made_grids():
    assert S.is_solution(WIKI_S)
    assert S.is_solution(WIKI_S, WIKI_P)
    assert S.is_solution(WIKI_S, "." * 81)
    assert not S.is_solution(WIKI_P)                                 # blanks
    assert not S.is_solution(WIKI_S[:-1])                            # length
    assert not S.is_solution(WIKI_S + "9")
    assert not S.is_solution(WIKI_S.replace("5", "0", 1))            # not a digit
    assert not S.is_solution(_swap(WIKI_S, 0, 1))                    # columns clash
    relabelled = _relabel(WIKI_S, "912345678")                       # valid grid, but changes givens
    assert S.is_solution(relabelled)
    assert not S.is_solution(relabelled, WIKI_P)
    assert S.is_solution(relabelled, "." * 81)


def test_conflicts_and_violations_for_two_swapped_digits():
    bad = _swap(WIKI_S, 0, 1)                  # r1c1 <-> r1c2: same row and box, two columns break
    a, b = WIKI_S[0], WIKI_S[1]
    r_b = next(r for r in range(1, 9) if WIKI_S[r * 9] == b)        # the other b in column 1
    r_a = next(r for r in range(1, 9) if WIKI_S[r * 9 + 1] == a)    # the other a in column 2
    assert S.conflicts(bad) == [(0, r_b * 9), (1, r_a * 9 + 1)]
    assert S.conflicts(WIKI_S) == []
    assert S.conflicts(WIKI_P) == []
    assert S.conflicts("." * 81) == []
    assert S.violations(WIKI_S) == 0
    assert S.violations(WIKI_S, WIKI_P) == 0
    assert S.violations(bad) == 2
    assert S.violations(bad, WIKI_P) == 4                           # both cells were givens
    assert S.violations(bad, "." * 81) == 2


def test_violations_count_blanks_and_changed_givens():
    assert S.violations(WIKI_P) == WIKI_P.count(".")
    assert S.violations(WIKI_P, WIKI_P) == WIKI_P.count(".")
    relabelled = _relabel(WIKI_S, "912345678")
    changed = sum(p != "." and p != g for p, g in zip(WIKI_P, relabelled))
    assert changed > 0
    assert S.violations(relabelled, WIKI_P) == changed
    three = "555" + "." * 78                                         # three pairs clash
    assert S.conflicts(three) == [(0, 1), (0, 2), (1, 2)]
    assert S.violations(three) == 3 + 78


# ---------------------------------------------------------------- solver

def test_solve_finds_the_unique_solution():
    r = S.solve(WIKI_P, limit=2)
    assert r.solutions == [WIKI_S] and r.guesses == 0
    assert S.singles_solve(WIKI_P) == WIKI_S
    assert S.unique_solution(WIKI_P) == WIKI_S
    assert S.unique_solution(WIKI_P.replace(".", "0")) == WIKI_S
    assert S.solve(WIKI_S).solutions == [WIKI_S]


def test_solve_on_a_hard_puzzle_guesses_and_singles_get_stuck():
    r = S.solve(ESCARGOT, limit=2)
    assert len(r.solutions) == 1 and S.is_solution(r.solutions[0], ESCARGOT)
    assert r.guesses > 0
    assert S.singles_solve(ESCARGOT) is None
    d = S.difficulty(ESCARGOT)
    assert d["blanks"] == ESCARGOT.count(".") and d["singles"] is False and d["guesses"] > 0


def test_solve_returns_both_solutions_of_a_deadly_pattern(multi):
    sol, puz, other = multi
    assert puz.count(".") == 4 and other != sol
    assert S.is_solution(other, puz)
    r = S.solve(puz, limit=2)
    assert sorted(r.solutions) == sorted([sol, other])
    assert sorted(S.solve(puz, limit=10).solutions) == sorted([sol, other])
    assert len(S.solve(puz, limit=1).solutions) == 1
    assert S.solve(puz, limit=1).solutions[0] in (sol, other)
    assert S.singles_solve(puz) is None                               # no single decides a or b
    with pytest.raises(S.SudokuError, match="more than one solution"):
        S.unique_solution(puz)


def test_solve_limit_caps_the_solutions_of_an_empty_grid():
    for limit in (1, 3):
        out = S.solve("." * 81, limit=limit).solutions
        assert len(out) == limit and len(set(out)) == limit
        assert all(S.is_solution(g) for g in out)


def test_solve_reports_no_solution():
    assert S.solve(UNSOLVABLE, limit=2).solutions == []
    assert S.singles_solve(UNSOLVABLE) is None
    with pytest.raises(S.SudokuError, match="no solution"):
        S.unique_solution(UNSOLVABLE)
    clash = "55" + "." * 79                    # solve() itself copes with clashing givens
    assert S.solve(clash).solutions == [] and S.singles_solve(clash) is None
    assert S.solve(_swap(WIKI_S, 0, 1)).solutions == []
    with pytest.raises(S.SudokuError, match="81 cells"):
        S.unique_solution(WIKI_P[:80])


def test_random_full_grid_is_valid_and_seeded():
    g1 = S.random_full_grid(random.Random(1))
    assert S.is_solution(g1)
    assert S.random_full_grid(random.Random(1)) == g1
    assert S.random_full_grid(random.Random(2)) != g1


# ---------------------------------------------------------------- generators

def _check_pair(puz: str, sol: str):
    assert len(puz) == 81 and set(puz) <= set(S.DIGITS + ".")
    assert S.is_solution(sol, puz)
    assert S.parse(puz) == puz
    r = S.solve(puz, limit=2)
    assert r.solutions == [sol]
    assert S.singles_solve(puz) == sol
    d = S.difficulty(puz)
    assert d == {"blanks": puz.count("."), "singles": True, "guesses": 0}


def test_generate_a_is_valid_unique_singles_and_seeded(gen_a):
    (p0, s0), (p1, s1) = gen_a[0], gen_a[1]
    for puz, sol in gen_a.values():
        _check_pair(puz, sol)
        assert puz.count(".") <= 54
    assert S.generate(0) == (p0, s0)
    assert p0 != p1 and s0 != s1


def test_generate_a_blank_count():
    p, s = S.generate(3, blanks=30)
    assert p.count(".") == 30                         # singles always cope with 30 blanks
    _check_pair(p, s)
    p0, s0 = S.generate(3, blanks=0)
    assert p0 == s0 and S.is_solution(s0)
    assert s0 == s                                    # the full grid depends on the seed only


def test_generate_symmetric_is_valid_unique_symmetric_and_seeded(gen_b, gen_a):
    (p0, s0), (p1, s1) = gen_b[0], gen_b[1]
    for puz, sol in gen_b.values():
        _check_pair(puz, sol)
        assert all((puz[i] == ".") == (puz[80 - i] == ".") for i in range(81))
        assert 40 <= puz.count(".") <= 54             # removal stops at blanks=54, never beyond
    assert S.generate_symmetric(0) == (p0, s0)
    assert p0 != p1 and s0 != s1
    assert {s0, s1}.isdisjoint({s for _, s in gen_a.values()})   # independent of generator A


def test_generate_symmetric_small_blank_target_and_pattern_grid():
    p, s = S.generate_symmetric(5, blanks=20)
    assert 20 <= p.count(".") <= 21
    assert all((p[i] == ".") == (p[80 - i] == ".") for i in range(81))
    _check_pair(p, s)
    g = S._pattern_grid(random.Random(7))
    assert S.is_solution(S._grid(g))
    assert S._pattern_grid(random.Random(7)) == g


# ---------------------------------------------------------------- augmentation

def _sigma(seed: int):
    """The cell map of augment with Random(seed): augmented cell k shows original cell sigma[k]."""
    sig = [None] * 81
    for i in range(81):
        marker = "." * i + "1" + "." * (80 - i)
        out, _ = S.augment(marker, WIKI_S, random.Random(seed))
        (k,) = [k for k, ch in enumerate(out) if ch != "."]
        sig[k] = i
    return sig


@pytest.mark.parametrize("seed", range(6))
def test_augment_keeps_validity_uniqueness_and_maps_givens_consistently(seed):
    pa, sa = S.augment(WIKI_P, WIKI_S, random.Random(seed))
    assert S.is_solution(sa, pa)
    assert pa.count(".") == WIKI_P.count(".")
    assert all(p == "." or p == s for p, s in zip(pa, sa))
    assert S.solve(pa, limit=2).solutions == [sa]
    assert (pa, sa) == S.augment(WIKI_P, WIKI_S, random.Random(seed))
    sig = _sigma(seed)
    assert sorted(sig) == list(range(81))
    f = {}
    for k in range(81):                        # one digit bijection for solution and givens
        assert f.setdefault(WIKI_S[sig[k]], sa[k]) == sa[k]
        assert pa[k] == ("." if WIKI_P[sig[k]] == "." else f[WIKI_P[sig[k]]])
    assert sorted(f) == sorted(f.values()) == list(S.DIGITS)
    for r in range(9):                         # each new row is one old row or one old column
        src = [sig[r * 9 + c] for c in range(9)]
        assert len({S.ROW[i] for i in src}) == 1 or len({S.COL[i] for i in src}) == 1


def test_augment_varies_with_the_rng_and_keeps_generated_pairs_unique(gen_a):
    outs = {S.augment(WIKI_P, WIKI_S, random.Random(k)) for k in range(8)}
    assert len(outs) == 8
    puz, sol = gen_a[0]
    pa, sa = S.augment(puz, sol, random.Random(11))
    assert S.is_solution(sa, pa) and S.solve(pa, limit=2).solutions == [sa]
    assert S.singles_solve(pa) == sa


# ---------------------------------------------------------------- canonical form and splits

def test_canonical_is_invariant_under_digit_relabelling():
    c = S.canonical(WIKI_S)
    assert c[:9] == "123456789" and S.is_solution(c)
    for perm in ("987654321", "234567891", "519283746"):
        r = _relabel(WIKI_S, perm)
        assert r != WIKI_S and S.canonical(r) == c
        assert S.split_of(r) == S.split_of(WIKI_S)
    assert S.canonical(c) == c
    assert S.canonical(_swap(WIKI_S, 0, 9)) != c       # a different grid, a different label


def test_split_of_is_a_hash_threshold():
    h = int(hashlib.sha256(S.canonical(WIKI_S).encode()).hexdigest()[:8], 16) / 16**8
    assert S.split_of(WIKI_S) == ("test" if h < 0.5 else "train")
    assert S.split_of(WIKI_S, test_share=0.0) == "train"
    assert S.split_of(WIKI_S, test_share=1.0) == "test"
    grids = [S.random_full_grid(random.Random(k)) for k in range(16)]
    splits = [S.split_of(g) for g in grids]
    assert set(splits) == {"train", "test"}


def test_puzzles_splits_are_disjoint_and_seeded():
    train = S.puzzles(2, split="train", seed=0)
    test = S.puzzles(2, split="test", seed=0)
    assert len(train) == len(test) == 2
    assert all(S.split_of(s) == "train" for _, s in train)
    assert all(S.split_of(s) == "test" for _, s in test)
    assert {S.canonical(s) for _, s in train}.isdisjoint({S.canonical(s) for _, s in test})
    for p, s in train + test:
        assert S.is_solution(s, p) and p.count(".") <= 54
    # the pool is the split's share of generate(seed * 1_000_003 + k), k = 0, 1, ...: seeded
    seq = []
    while sum(S.split_of(s) == "train" for _, s in seq) < 2 or sum(S.split_of(s) == "test" for _, s in seq) < 2:
        seq.append(S.generate(len(seq)))
    assert train == [x for x in seq if S.split_of(x[1]) == "train"][:2]
    assert test == [x for x in seq if S.split_of(x[1]) == "test"][:2]
    assert S.puzzles(1, split="test", seed=1) == [next(x for x in (S.generate(1_000_003 + k) for k in range(20))
                                                       if S.split_of(x[1]) == "test")]


def test_puzzles_blanks_and_generator_b():
    pairs = S.puzzles(1, split="test", seed=2, blanks=25)
    assert pairs[0][0].count(".") == 25 and S.split_of(pairs[0][1]) == "test"
    b = S.puzzles(2, split="test", seed=0, generator="B")
    assert b == [S.generate_symmetric(0), S.generate_symmetric(1)]
    with pytest.raises(S.SudokuError, match="generator must be A or B"):
        S.puzzles(1, split="test", generator="C")


# ---------------------------------------------------------------- CSV

def test_read_csv_round_trip(tmp_path, gen_a):
    pairs = [(WIKI_P, WIKI_S)] + list(gen_a.values())
    f = tmp_path / "p.csv"
    f.write_text("puzzle,solution\n" + "".join(f"{p},{s}\n" for p, s in pairs))
    assert S.read_csv(f) == pairs
    assert S.read_csv(str(f)) == pairs
    g = tmp_path / "q.csv"                      # column order, 0 blanks, extra columns, quoting
    g.write_text(f'id,solution,puzzle\n7,{WIKI_S},"{WIKI_P.replace(".", "0")}"\n')
    assert S.read_csv(g) == [(WIKI_P, WIKI_S)]


def test_read_csv_errors(tmp_path):
    with pytest.raises(S.SudokuError, match="does not exist"):
        S.read_csv(tmp_path / "missing.csv")
    with pytest.raises(S.SudokuError, match="does not exist"):
        S.read_csv(tmp_path)                    # a folder is not a puzzle file
    cases = {
        "empty.csv": ("", "expected a header with columns puzzle,solution"),
        "header.csv": ("puzzle,answer\n" + f"{WIKI_P},{WIKI_S}\n", "expected a header with columns puzzle,solution"),
        "noheader.csv": (f"{WIKI_P},{WIKI_S}\n", "expected a header with columns puzzle,solution"),
        "only.csv": ("puzzle,solution\n", "holds no puzzles"),
        "short.csv": ("puzzle,solution\n" + f"{WIKI_P},{WIKI_S}\n" + f"{WIKI_P[:-1]},{WIKI_S}\n",
                      "line 3: a puzzle has 81 cells, this one has 80"),
        "char.csv": ("puzzle,solution\n" + f"{WIKI_P},{WIKI_S[:-1]}x\n", "line 2: illegal character"),
        "clash.csv": ("puzzle,solution\n" + f"55{WIKI_P[2:]},{WIKI_S}\n", "line 2: contradictory givens"),
        "missing.csv": ("puzzle,solution\n" + f"{WIKI_P},{WIKI_S}\n" * 2 + f"{WIKI_P}\n", "line 4: a puzzle has 81 cells"),
        "swapped.csv": ("puzzle,solution\n" + f"{WIKI_P},{_swap(WIKI_S, 0, 1)}\n", "line 2: contradictory givens"),
        "given.csv": ("puzzle,solution\n" + f"{WIKI_P},{_relabel(WIKI_S, '912345678')}\n",
                      "line 2: the solution is incomplete, breaks a rule or changes a given"),
        "blank.csv": ("puzzle,solution\n" + f"{WIKI_P},{WIKI_P}\n", "line 2: the solution is incomplete"),
    }
    for name, (text, fragment) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        with pytest.raises(S.SudokuError) as e:
            S.read_csv(f)
        assert fragment in str(e.value), (name, str(e.value))
        assert str(f) in str(e.value)


def test_read_csv_line_number_counts_blank_lines(tmp_path):
    f = tmp_path / "gap.csv"
    f.write_text("puzzle,solution\n" + f"{WIKI_P},{WIKI_S}\n" + "\n" + f"bad,{WIKI_S}\n")
    with pytest.raises(S.SudokuError, match="line 4:"):
        S.read_csv(f)


# ---------------------------------------------------------------- pretty

def test_pretty_layout():
    lines = S.pretty(WIKI_S).split("\n")
    assert len(lines) == 11
    assert lines[0] == "5 3 4 | 6 7 8 | 9 1 2"
    assert lines[3] == lines[7] == "------+-------+------"
    assert lines[10] == "3 4 5 | 2 8 6 | 1 7 9"
    p = S.pretty(WIKI_P).split("\n")
    assert len(p) == 11 and p[0] == "5 3 . | . 7 . | . . ."
    assert all(len(line) == 21 for line in lines + p)


@pytest.mark.parametrize("generator", ["A", "B"])
def test_search_level_puzzles_are_unique_and_beyond_singles(generator, monkeypatch):
    """level="search": every puzzle has one solution, keeps its givens, and singles alone do not
    solve it; the easy and hard levels' puzzles are unchanged by the new level (their own streams)."""
    pairs = S.puzzles(3, split="train", seed=4, blanks=54, level="search", generator=generator)
    for p, s in pairs:
        assert S.is_solution(s, p) and len(S.solve(p, limit=2).solutions) == 1
        assert S.singles_solve(p) is None and S.keeps_class(p, "search")
    gen = S.generate if generator == "A" else S.generate_symmetric
    assert gen(4, 54, "hard") != gen(4, 54, "search") and gen(4, 54, "easy") == gen(4, 54)
    monkeypatch.setattr(S, "SEARCH_DRAWS", 5)
    with pytest.raises(S.SudokuError, match="use more blanks"):
        gen(0, 20, "search")                                  # 20 blanks: singles always suffice
