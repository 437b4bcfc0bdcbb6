"""Generated doc sections: only the marked section changes, and a missing one is appended."""

from tools.markdown import replace_section


def test_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nintro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    replace_section(doc, "a", "new a\n| x |")
    text = doc.read_text()
    assert "old a" not in text and "new a\n| x |" in text
    assert text.startswith("# Results\n\nintro\n<!-- a:begin -->\n") and "middle\n<!-- b:begin -->\nold b" in text
    replace_section(doc, "a", "newer a")
    assert doc.read_text().count("<!-- a:begin -->") == 1 and "new a" not in doc.read_text()


def test_appends_a_missing_section_and_creates_a_missing_file(tmp_path):
    doc = tmp_path / "docs" / "new.md"
    replace_section(doc, "t", "body")
    assert doc.read_text() == "<!-- t:begin -->\nbody\n<!-- t:end -->\n"
    replace_section(doc, "u", r"a backslash \1 stays")
    assert doc.read_text().endswith("<!-- t:end -->\n\n<!-- u:begin -->\na backslash \\1 stays\n<!-- u:end -->\n")
