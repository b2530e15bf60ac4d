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


def test_an_alert_says_whether_it_is_a_notice():
    """A user's on_alert callable received over_budget on a healthy run and could not tell it
    from a health alert without the kinds' list."""
    from lightning_viz import Alert

    def alert(kind):
        return Alert("FilterMonitor", kind, "conv1", 1.0, 0.5, 0, 10, "...")

    assert [alert(k).is_notice for k in ("over_budget", "not_shown", "exploding")] == [
        True,
        True,
        False,
    ]
