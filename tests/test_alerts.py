from lightning_viz.alerts import AlertBook


def test_alert_book_says_raised_once_and_cleared_once():
    book = AlertBook()
    key = ("conv", "exploding")
    assert book.update(key, False) is None
    assert book.update(key, True) == "raised"
    assert book.update(key, True) is None
    assert book.update(key, False) == "cleared"
    assert book.update(key, False) is None
    assert book.update(key, True) == "raised"
    restored = AlertBook()
    restored.load_state_dict(book.state_dict())
    assert restored.update(key, True) is None  # still active after a resume
