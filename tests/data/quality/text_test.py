from jaxtune.data.quality import text


def test_checks():
  assert text.has_mojibake("cafÃ© au lait") and text.has_mojibake("bad \ufffd byte")
  assert not text.has_mojibake("café au lait, naïve")
  assert text.has_control("a\x07b") and not text.has_control("a\tb\nc")
  assert text.has_html("a <b>bold</b> move") and text.has_html("Lilo &amp; Stitch")
  assert not text.has_html("2 < 3 and 5 > 4")
  assert text.has_url("see https://x.org/a") and text.has_url("www.example.com") and not text.has_url("a.b")


def test_normalize():
  assert text.normalize("  cafÃ©\x07 <i>au</i>&nbsp;lait\n\n ") == "café au lait"
  assert text.normalize("ﬁne  ＡＢＣ") == "fine ABC"  # NFKC
  assert text.normalize("<br/>") == ""
  assert text.dedup_key(" a  b ") == text.dedup_key("a b") != text.dedup_key("A b")


def test_language_check():
  check = text.LanguageCheck("en")
  assert check.other_language("Ce film est vraiment magnifique, les acteurs sont excellents et je "
                              "le recommande.") == "fr"
  assert check.other_language("Intelligent and moving.") is None  # too short to judge
  assert check.other_language("The film is a charming and often affecting journey for all.") is None
