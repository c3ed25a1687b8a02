"""Issue 12's acceptance, "every documented shape of ../shared/graph-samples/ reproduced by a test",
enforced: each ``*.http.txt`` sample is named here with the tests that reproduce it, and each of
those tests exists. A new sample without a test, or a test renamed away, fails this module; so do
missing samples (it fails, not skips: the samples are the point)."""

from __future__ import annotations

import importlib

import pytest

from tests.graph_emulator.direct import SAMPLES_DIR

#: sample file → the tests (``module::function`` in tests/graph_emulator) that reproduce it.
COVERED_BY: dict[str, tuple[str, ...]] = {
    "attachment-get-file-value.http.txt": ("test_messages::test_file_attachment",),
    "attachment-get-file.http.txt": ("test_messages::test_file_attachment",),
    "attachment-get-item-eventmessage-value.http.txt": (
        "test_messages::test_item_attachment_and_its_expansion",
    ),
    "attachment-get-item-expand.http.txt": (
        "test_messages::test_item_attachment_and_its_expansion",
    ),
    "attachment-get-item.http.txt": ("test_messages::test_item_attachment_and_its_expansion",),
    "attachment-get-reference.http.txt": (
        "test_reference_attachments::test_a_reference_attachment_is_shaped_as_the_docs",
        "test_reference_attachments::test_a_reference_attachments_value_is_405",
    ),
    "batch-dependson.request.http.txt": ("test_batch::test_depends_on_order_and_424",),
    "batch-mixed-statuses.http.txt": (
        "test_batch::test_mixed_outcomes",
        "test_batch::test_batch_has_the_documented_shape",
    ),
    "delta-mailfolders-page-next.http.txt": (
        "test_folder_delta::test_initial_round_pages_like_the_docs",
    ),
    "delta-messages-apiref-page-next.http.txt": (
        "test_delta::test_initial_round_pages_like_the_docs",
        "test_delta::test_default_page_size_is_ten",
    ),
    "delta-messages-initial-page-next.http.txt": (
        "test_delta::test_initial_round_pages_like_the_docs",
    ),
    "delta-messages-last-page-deltalink.http.txt": (
        "test_delta::test_initial_round_pages_like_the_docs",
    ),
    "delta-messages-next-round-removed.http.txt": (
        "test_delta::test_next_round_reports_changes_and_removals",
    ),
    "delta-messages-page2-next.http.txt": ("test_delta::test_initial_round_pages_like_the_docs",),
    "error-501-not-implemented.http.txt": ("test_folders::test_options_not_emulated_are_501",),
    "error-response-example.http.txt": ("test_errors::test_odata_error_shape_and_ids",),
    "message-get-body-text.http.txt": ("test_messages::test_prefer_text_body_is_applied",),
    "message-get-internetmessageheaders.http.txt": (
        "test_messages::test_internet_message_headers_only_when_selected",
    ),
    "message-get-mime-value.http.txt": ("test_messages::test_value_is_the_mime_as_text_plain",),
    "message-get.http.txt": ("test_messages::test_get_has_the_documented_properties",),
    "message-move.http.txt": (
        "test_messages::test_move_answers_201_and_the_message_with_a_new_id",
    ),
    "message-update.http.txt": (
        "test_messages::test_patch_as_documented",
        "test_messages::test_patch_a_draft",
        "test_messages::test_patch_categories_flag_importance",
    ),
    "subscription-create-with-lifecycle-url.request.http.txt": (
        "test_subscriptions::test_documented_requests_and_shapes",
    ),
    "subscription-create.http.txt": ("test_subscriptions::test_documented_requests_and_shapes",),
    "subscription-delete.request.http.txt": (
        "test_subscriptions::test_list_get_renew_reauthorize_delete",
    ),
    "subscription-reauthorize.request.http.txt": (
        "test_subscriptions::test_list_get_renew_reauthorize_delete",
    ),
    "subscription-renew.request.http.txt": (
        "test_subscriptions::test_documented_requests_and_shapes",
    ),
    "throttling-429.http.txt": ("test_throttling::test_429_has_the_documented_shape",),
    "webhook-change-notification.http.txt": (
        "test_subscriptions::test_documented_requests_and_shapes",
    ),
    "webhook-lifecycle-notification.http.txt": (
        "test_subscriptions::test_lifecycle_notifications",
    ),
    "webhook-validation-request.http.txt": (
        "test_subscriptions::test_create_validates_the_url_then_answers_201",
    ),
}


def _samples() -> list[str]:
    return sorted(path.name for path in SAMPLES_DIR.glob("*.http.txt"))


def test_the_samples_are_there() -> None:
    """../shared/graph-samples holds the documented exchanges (missing: fail, never skip)."""
    assert _samples(), f"no *.http.txt in {SAMPLES_DIR}"


def test_every_sample_is_named_by_a_test() -> None:
    """Each sample has an entry here, and no entry names a sample that is gone."""
    samples = set(_samples())
    assert sorted(samples - set(COVERED_BY)) == [], "samples without a test"
    assert sorted(set(COVERED_BY) - samples) == [], "entries for samples that are gone"


@pytest.mark.parametrize("test", sorted({t for tests in COVERED_BY.values() for t in tests}))
def test_each_named_test_exists(test: str) -> None:
    """Every ``module::function`` named above is a test function of tests/graph_emulator."""
    module_name, _, function = test.partition("::")
    module = importlib.import_module(f"tests.graph_emulator.{module_name}")
    found = getattr(module, function, None)
    assert function.startswith("test_"), f"{test} is not a test name"
    assert callable(found), f"no test {test}"
