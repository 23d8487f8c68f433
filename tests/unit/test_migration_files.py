import re

from core.store.migrate import EXPECTED_TABLES, load_migrations


def test_migrations_are_numbered_pairs() -> None:
    migs = load_migrations()
    assert [m.version for m in migs] == list(range(1, len(migs) + 1))
    assert len(migs) >= 5
    assert all(m.up_sql.strip() and m.down_sql.strip() for m in migs)


def test_seed_tables_each_in_their_own_migration() -> None:
    migs = load_migrations()
    for mig, table in zip(migs[:5], EXPECTED_TABLES, strict=True):
        assert re.search(rf"CREATE TABLE {table}\b", mig.up_sql)
        assert re.search(rf"DROP TABLE IF EXISTS {table}\b", mig.down_sql)


def test_every_index_has_a_comment_naming_the_query_it_serves() -> None:
    for mig in load_migrations():
        lines = mig.up_sql.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"CREATE (UNIQUE )?INDEX", line):
                assert lines[i - 1].startswith("--"), f"{mig.name}: {line}"


def test_no_schema_is_hard_coded() -> None:
    def code(sql: str) -> str:
        return "\n".join(line.split("--")[0] for line in sql.splitlines())

    for mig in load_migrations():
        assert "gap006" not in code(mig.up_sql)
        assert "gap006" not in code(mig.down_sql)
