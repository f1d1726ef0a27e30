"""Every bad input (``reference/bad-inputs.md`` 1-39, then those found later) has tests,
and RELIABILITY.md lists them.

:data:`COVERAGE` maps each item to the error it ends in and the tests that prove it
(``file::function``). This module checks that every named test function exists (by
reading the files, without importing them) and that RELIABILITY.md's table names the
same tests. An item whose tests have not been written yet is an expected failure
that says so, never a silent pass.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

TESTS = Path(__file__).parent
RELIABILITY = TESTS.parent / "RELIABILITY.md"

#: item -> (what the input is, the error it gives, tests)
COVERAGE: dict[int, tuple[str, str, list[str]]] = {
    1: ("0-byte file", "EmptyFile", [
        "test_formats.py::test_bad_1_empty",
        "test_import.py::test_every_bad_file_is_refused_and_changes_nothing",
    ]),
    2: ("Git-LFS pointer instead of weights", "LfsPointerFile", [
        "test_formats.py::test_bad_2_lfs_pointer",
        "test_import.py::test_every_bad_file_is_refused_and_changes_nothing",
        "test_hub_pull.py::test_lfs_pointer_in_place_of_weights",
    ]),
    3: ("truncated safetensors; bytes after the last tensor", "CorruptFile", [
        "test_formats.py::test_bad_3_truncated_or_appended_safetensors",
        "test_reliability_fuzz.py::test_fuzz_safetensors_reader",
    ]),
    4: ("header length past the file, or absurdly large", "CorruptFile / FileTooLarge", [
        "test_formats.py::test_bad_4_header_length",
        "test_reliability_fuzz.py::test_fuzz_safetensors_reader",
    ]),
    5: ("header not UTF-8 or not JSON; duplicate keys; overlaps or gaps", "CorruptFile", [
        "test_formats.py::test_bad_5_header_text",
        "test_reliability_fuzz.py::test_huge_integer_in_a_safetensors_header_is_a_corrupt_file",
    ]),
    6: ("shape x dtype not matching the span; int, bool or unknown dtype", "BadTensor", [
        "test_formats.py::test_bad_6_dtype_and_size",
    ]),
    7: ("a pickle named .safetensors", "read by content; UnsafeFile if hostile", [
        "test_formats.py::test_bad_7_pickle_named_safetensors_is_a_pickle",
        "test_safe_pickle.py::test_pickle_named_safetensors_is_detected_by_content",
        "test_reliability_pickle_corpus.py::test_every_payload_is_refused_and_none_runs",
    ]),
    8: ("reduce of os.system, subprocess, eval, exec, getattr, importlib, marshal, runpy, "
        "nested pickle.loads", "UnsafeFile", [
        "test_safe_pickle.py::test_malicious_pickles_are_refused_unexecuted",
        "test_reliability_pickle_corpus.py::test_every_payload_is_refused_and_none_runs",
        "test_reliability_pickle_corpus.py::test_library_import_of_the_corpus_changes_nothing",
    ]),
    9: ("payload followed by a broken stream", "UnsafeFile", [
        "test_safe_pickle.py::test_payload_followed_by_any_junk_is_unsafe",
        "test_safe_pickle.py::test_unsafe_beats_broken_and_everything_is_listed",
        "test_reliability_pickle_corpus.py::test_every_payload_is_refused_and_none_runs",
    ]),
    10: ("7z, bad-CRC zip, tar .pt, zip members with path-like names",
         "UnsupportedContent / CorruptFile / UnsafeFile", [
        "test_formats.py::test_bad_10_archives",
        "test_safe_pickle.py::test_7z_and_tar_are_refused",
        "test_safe_pickle.py::test_bad_crc_is_corrupt",
        "test_safe_pickle.py::test_path_like_member_names_are_unsafe",
        "test_safe_pickle.py::test_unexpected_member_names_are_unsafe",
    ]),
    11: ("declared storage far larger than an embedding", "FileTooLarge", [
        "test_safe_pickle.py::test_declared_storage_far_larger_than_an_embedding",
    ]),
    12: (".pt holding non-tensors or an nn.Module", "UnsupportedContent (UnsafeFile for "
         "user classes)", [
        "test_formats.py::test_bad_12_no_tensors",
        "test_safe_pickle.py::test_module_and_custom_objects",
    ]),
    13: ("width not 768/1024/1280; SDXL missing or unequal halves", "FamilyMismatch", [
        "test_formats.py::test_bad_13_widths_and_sdxl_slots",
    ]),
    14: ("several terms in string_to_param; unrelated keys", "AmbiguousEmbedding", [
        "test_formats.py::test_bad_14_several_terms_or_keys",
    ]),
    15: ("[0, d], scalar or 3-D tensors", "BadTensor", [
        "test_formats.py::test_bad_15_shapes",
    ]),
    16: ("NaN or Inf; beyond +-65504", "BadTensor", [
        "test_formats.py::test_bad_16_values",
    ]),
    17: ("all zeros, or an outlier norm", "accepted with flag all_zero / norm_outlier", [
        "test_formats.py::test_bad_17_zero_and_outlier_norms_are_flagged",
        "test_import.py::test_quality_flags_are_kept",
    ]),
    18: ("more than 75 vectors", "BadTensor", [
        "test_formats.py::test_bad_18_too_many_vectors",
    ]),
    19: ("name or token that is an ordinary word", "InvalidName (derived names get a suffix)", [
        "test_library.py::test_ordinary_word_as_name_or_token_is_refused",
        "test_library.py::test_imported_file_named_like_a_word_gets_a_suffix",
        "test_hub_pull.py::test_an_ordinary_word_is_not_taken_as_a_name",
    ]),
    20: ("names equal after NFKC, case folding, trimming", "NameCollision", [
        "test_library.py::test_names_equal_after_normalization_collide",
        "test_names.py::test_name_key_folds_case_and_nfkc",
    ]),
    21: ("control, zero-width, bidi, /, \\, .., device names, trailing dots", "InvalidName", [
        "test_names.py::test_invalid_names",
        "test_library.py::test_invalid_name_changes_nothing",
    ]),
    22: ("foo_1 when foo has several vectors", "NameCollision", [
        "test_library.py::test_expansion_name_clashes_with_multivector",
        "test_library.py::test_multivector_clashes_with_existing_expansion_name",
    ]),
    23: ("the same tensors twice", "AlreadyExists (API) / status present (import)", [
        "test_library.py::test_same_tensors_twice_is_one_entry",
        "test_import.py::test_folder_with_mixed_files_goes_on_past_failures",
        "test_reliability_benign.py::test_importing_the_benign_set_accepts_every_file",
        "test_reliability_concurrency.py::test_eight_writers_two_hundred_imports_each",
    ]),
    24: ("catalog locked past the busy timeout", "CatalogLocked", [
        "test_library.py::test_catalog_locked_past_busy_timeout",
        "test_reliability_concurrency.py::test_eight_writers_two_hundred_imports_each",
    ]),
    25: ("disk full or I/O error writing a blob or committing", "DiskFull / StoreError", [
        "test_library.py::test_disk_full_while_writing_blob",
        "test_library.py::test_io_error_on_commit_rolls_back",
        "test_reliability_faults.py::test_blob_write_faults_change_nothing",
        "test_reliability_faults.py::test_fsync_of_the_blob_folder_failing_is_an_error",
        "test_reliability_faults.py::test_bulk_sync_failing_is_an_error",
        "test_reliability_faults.py::test_commit_io_error_rolls_back",
        "test_reliability_faults.py::test_commit_io_error_on_tag_and_remove",
        "test_reliability_faults.py::test_real_database_full_rolls_back",
    ]),
    26: ("killed between the blob and the row", "none: orphan blob, removed by gc", [
        "test_library.py::test_orphan_blob_from_a_killed_import_is_collected",
        "test_reliability_kills.py::test_kills_during_import_tag_and_remove",
    ]),
    27: ("catalog file corrupt; blob altered on disk", "CatalogCorrupt / BlobCorrupt", [
        "test_library.py::test_corrupt_catalog_file",
        "test_library.py::test_altered_blob_is_refused_and_reported",
    ]),
    28: ("not an image, truncated, bombs, big text chunks, CMYK/16-bit/alpha",
         "ImageError (modes converted)", [
        "test_trainer_images.py::test_not_an_image_with_an_image_extension",
        "test_trainer_images.py::test_truncated_png_and_jpeg",
        "test_trainer_images.py::test_decompression_bomb_is_refused_from_the_header",
        "test_trainer_images.py::test_oversized_text_chunk_is_refused",
        "test_trainer_images.py::test_modes_are_converted_to_rgb",
        "test_trainer_images.py::test_sixteen_bit_values_are_scaled_not_clipped",
        "test_trainer_images.py::test_transparent_pixels_become_white",
    ]),
    29: ("fewer than the minimum images; all identical", "ImageError / warning", [
        "test_trainer_images.py::test_too_few_images",
        "test_trainer_images.py::test_all_identical_images_warn",
    ]),
    30: ("repo names ../x, absolute, C:\\, UNC (symlinks: not tested)", "HubUnsafePath", [
        "test_hub_faults.py::test_unsafe_remote_names_are_refused_before_any_download",
        "test_hub_schema.py::test_unsafe_names",
        "test_hub_schema.py::test_a_safe_name_never_escapes",
    ]),
    31: ("downloaded hash or size differs from the listing", "HubIntegrityError", [
        "test_hub_faults.py::test_altered_bytes_are_caught_and_the_bad_copy_discarded",
        "test_hub_faults.py::test_listed_size_differs_from_bytes",
        "test_hub_pull.py::test_offline_cache_with_a_bad_blob_is_refused",
    ]),
    32: ("connection reset mid-download; Range ignored", "resumed and verified; "
         "HubIntegrityError when always short", [
        "test_hub_faults.py::test_truncated_body_is_resumed_and_verified",
        "test_hub_faults.py::test_truncated_body_and_a_server_ignoring_range",
        "test_hub_faults.py::test_short_body_every_time_is_a_clear_error",
    ]),
    33: ("repeated 429 or 5xx", "HubUnavailable after bounded backoff", [
        "test_hub_faults.py::test_429_with_retry_after_is_retried",
        "test_hub_faults.py::test_repeated_5xx_gives_up_after_bounded_backoff",
        "test_hub_faults.py::test_backoff_honours_retry_after_up_to_the_cap",
    ]),
    34: ("401/403, read-only token", "HubAuthError (token never printed)", [
        "test_hub_push.py::test_read_only_token_is_refused_clearly",
        "test_hub_push.py::test_bad_token_and_no_token",
        "test_hub_faults.py::test_bad_token_on_pull",
        "test_hub_cli.py::test_token_never_appears_anywhere",
    ]),
    35: ("remote branch moved during a push", "HubConflict", [
        "test_hub_push.py::test_moved_branch_fails_instead_of_overwriting",
        "test_hub_push.py::test_branch_moving_during_the_push_is_refused_by_parent_commit",
    ]),
    36: ("repo with no embedding, or several", "HubNoEmbedding / AmbiguousEmbedding", [
        "test_hub_pull.py::test_repo_without_embedding",
        "test_hub_pull.py::test_several_embeddings_ask_which",
    ]),
    37: ("training killed mid-run", "none: resumes from the last atomic checkpoint", [
        "test_reliability_kills.py::test_killed_training_run_resumes_to_the_same_result",
        "test_reliability_kills.py::test_kills_during_checkpoint_writes",
        "test_trainer_run.py::test_interrupted_and_resumed_equals_uninterrupted",
    ]),
    38: ("loss becomes NaN", "NaNLoss (last good checkpoint kept)", [
        "test_trainer_run.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint",
    ]),
    39: ("base model the embedding cannot fit; multi-token initializer",
         "BaseModelError / IncompatibleEmbedding (FamilyMismatch); initializer handling reported", [
        "test_trainer_core.py::test_load_base_refuses_what_it_cannot_use",
        "test_trainer_core.py::test_initializer_tokens_cycle_and_are_reported",
        "test_compose_loader.py::test_sd2_on_sd1_fails_with_shapes_and_widths",
        "test_compose_loader.py::test_sdxl_on_sd1_fails",
        "test_compose_compose.py::test_incompatible_family_fails_with_shapes_and_widths",
    ]),
    40: ("the paper's .pt: int64 token ids; other integer storages", 'imported / UnsupportedContent / BadTensor', [
        'test_formats_paper_and_pixels.py::test_paper_layout_reads_with_exact_vectors',
        'test_formats_paper_and_pixels.py::test_paper_layout_with_its_parameter_dict',
        'test_formats_paper_and_pixels.py::test_paper_pt_imports_under_its_file_name',
        'test_formats_paper_and_pixels.py::test_other_integer_storages_are_unsupported_not_unsafe',
        'test_formats_paper_and_pixels.py::test_integer_tensor_where_the_vectors_belong_is_a_bad_tensor',
    ]),
    41: ('tensor views outside their storage; stride-0 giants', 'CorruptFile / FileTooLarge', [
        'test_formats_paper_and_pixels.py::test_tensor_views_are_checked_against_their_storage',
        'test_formats_paper_and_pixels.py::test_a_stride_zero_view_claiming_billions_of_elements_is_too_large',
    ]),
    42: ('embedding image with data only in its pixel strips', 'imported, named by the name inside', [
        'test_formats_paper_and_pixels.py::test_side_strip_round_trip_with_exact_vectors',
        'test_formats_paper_and_pixels.py::test_the_name_inside_an_image_is_the_name_and_token',
        'test_formats_paper_and_pixels.py::test_plain_pictures_hold_no_embedding',
    ]),
    43: ('broken or oversized pixel-strip data or image header', 'CorruptFile / BadTensor / FileTooLarge', [
        'test_formats_paper_and_pixels.py::test_broken_strip_data_is_a_typed_error',
        'test_formats_paper_and_pixels.py::test_pixel_dimensions_are_checked_before_any_pixel_is_decoded',
        'test_formats_paper_and_pixels.py::test_pillow_decompression_bomb_check_stays_on',
        'test_formats_paper_and_pixels.py::test_undecodable_pixels_are_corrupt',
        'test_formats_paper_and_pixels.py::test_refused_files_exit_with_one_line_and_change_nothing',
    ]),
    44: ('embedding images in a folder, found by content', 'found / skipped', [
        'test_formats_paper_and_pixels.py::test_folder_import_finds_images_by_content',
        'test_formats_paper_and_pixels.py::test_a_damaged_png_naming_the_chunk_is_tried_and_reported',
    ]),
    45: ('a tokenizer word as trigger; --init holding a placeholder', 'InvalidName / UsageError', [
        'test_trainer_recovery.py::test_a_vocabulary_word_as_name_is_refused_before_images_and_weights',
        'test_trainer_recovery.py::test_every_trigger_token_in_every_tokenizer_is_checked_like_the_loader_does',
        'test_trainer_recovery.py::test_an_initializer_holding_a_placeholder_token_is_a_usage_error',
    ]),
    46: ('a --device this machine cannot use', 'DeviceUnavailable', [
        'test_trainer_recovery.py::test_devices_this_machine_cannot_use_are_one_line_usage_errors',
        'test_trainer_recovery.py::test_train_and_compose_refuse_a_missing_device_before_any_work',
    ]),
    47: ('a checkpoint with refused vectors; resume after NaNLoss', 'NaNLoss / TrainingError / resumed', [
        'test_trainer_recovery.py::test_a_checkpoint_with_vectors_the_importer_refuses_is_not_resumed',
        'test_trainer_recovery.py::test_nan_recovery_resumes_with_a_lower_lr_from_a_checkpoint_the_importer_accepts',
        'test_trainer_recovery.py::test_lr_and_precision_may_change_on_resume_and_every_change_is_kept',
    ]),
    48: ('a bad, oversized or missing templates file', 'UsageError / NotFound', [
        'test_trainer_images.py::test_a_template_that_would_fail_at_the_first_step_fails_when_read',
        'test_trainer_images.py::test_an_oversized_templates_file_is_refused_before_it_is_read_whole',
        'test_trainer_images.py::test_train_refuses_bad_templates_before_loading_the_base_model',
    ]),
    49: ('a token from a file or repo that cannot be a trigger', 'kept and reported', [
        'test_import_names.py::test_a_token_that_cannot_be_a_trigger_is_kept_and_reported',
        'test_hub_pull.py::test_a_repo_token_that_cannot_be_a_trigger_is_kept_and_reported',
    ]),
    50: ('foo and foo_N in one batch, pull or blend', 'NameCollision', [
        'test_import_names.py::test_expansion_rule_inside_one_import_in_either_order',
        'test_hub_pull.py::test_bulk_pull_keeps_the_expansion_rule_in_either_order',
        'test_hub_pull.py::test_library_pull_keeps_the_expansion_rule_in_either_order',
        'test_import_names.py::test_expansion_rule_inside_one_blend',
    ]),
    51: ('control characters and markup on their way to a terminal', 'escaped, never echoed', [
        'test_import_names.py::test_untrusted_text_is_escaped_in_the_table',
        'test_show_escaping.py::test_training_run_and_preview_values_are_printed_not_interpreted',
        'test_formats.py::test_unknown_format_says_what_it_saw',
    ]),
    52: ('Civitai 429 with Retry-After, 5xx', 'retried, bounded; CivitaiUnavailable', [
        'test_civitai.py::test_info_retries_429_and_500_bounded',
        'test_civitai.py::test_info_gives_up_after_bounded_retries_and_changes_nothing',
    ]),
    53: ('Civitai reply: non-JSON, truncated, huge, too deep, wrong types', 'CivitaiBadReply', [
        'test_civitai.py::test_info_bad_replies_change_nothing',
        'test_civitai.py::test_pull_refusals_register_nothing',
    ]),
    54: ('Civitai download with a wrong or missing hash; not an embedding', 'CivitaiIntegrityError', [
        'test_civitai.py::test_pull_refusals_register_nothing',
    ]),
    55: ('Civitai HTML/markup in text, non-image previews, token to other hosts', 'stripped, skipped', [
        'test_civitai.py::test_info_html_description_is_text_and_escaped',
        'test_civitai.py::test_info_skips_previews_that_are_not_images',
        'test_civitai.py::test_token_goes_to_the_endpoint_only',
    ]),
    56: ('a FRAME ending inside an opcode (the frame trick), frames inside frames or past STOP', 'UnsafeFile / CorruptFile', [
        'test_safe_pickle.py::test_the_frame_trick_is_unsafe_in_every_container',
        'test_safe_pickle.py::test_malformed_frames_are_refused_before_torch',
        'test_safe_pickle.py::test_a_frame_longer_than_the_file_is_corrupt',
        'test_safe_pickle.py::test_refused_pickles_exit_with_one_line_and_change_nothing',
        'test_reliability_pickle_corpus.py::test_every_payload_is_refused_and_none_runs',
    ]),
    57: ('a second pickle after STOP, in another .pkl member, in or after a legacy stream', 'UnsafeFile', [
        'test_safe_pickle.py::test_a_second_pickle_after_stop_is_walked',
        'test_safe_pickle.py::test_harmless_bytes_after_stop_are_still_corrupt',
        'test_safe_pickle.py::test_a_threat_beats_every_structural_refusal',
        'test_safe_pickle.py::test_literal_imports_are_found_at_any_offset',
        'test_reliability_pickle_corpus.py::test_the_tricks_cover_every_container_they_hide_in',
    ]),
    58: ('a headerless pickle opening with V or S; text starting with such letters', 'UnsafeFile / UnknownFormat', [
        'test_formats.py::test_a_headerless_pickle_opening_with_a_string_is_read_as_a_pickle',
        'test_formats.py::test_unknown_format_says_what_it_saw',
        'test_reliability_pickle_corpus.py::test_headerless_pickle_opening_with_a_string_is_named_unsafe',
    ]),
    59: ('Module.state_dict() files; other BUILDs on a dict', 'imported / UnsafeFile', [
        'test_safe_pickle.py::test_module_state_dicts_are_not_called_hostile',
        'test_safe_pickle.py::test_other_builds_on_a_dict_stay_unsafe',
        'test_safe_pickle.py::test_build_only_on_an_ordered_dict_and_only_once',
        'test_safe_pickle.py::test_a_state_dict_imports_through_the_cli',
        'test_formats.py::test_an_embedding_state_dict_imports_like_the_same_tensor_in_a_dict',
        'test_reliability_pickle_corpus.py::test_state_dict_files_are_not_called_hostile',
    ]),
    60: ('small files that would cost gigabytes (views, shared lists, zip and PNG inflation)', 'FileTooLarge / CorruptFile', [
        'test_memory_bombs.py::test_every_bomb_is_refused_under_a_1_gib_limit',
        'test_memory_bombs.py::test_each_bomb_is_one_error_line_and_changes_nothing',
        'test_memory_bombs.py::test_a_folder_of_bombs_still_imports_its_good_file',
        'test_safe_pickle.py::test_a_tensor_may_claim_no_more_elements_than_an_embedding_holds',
        'test_safe_pickle.py::test_a_list_shared_a_million_times_stays_shared',
        'test_safe_pickle.py::test_legacy_storage_views_are_checked',
        'test_formats.py::test_repeated_png_text_chunks_share_one_text_budget',
    ]),
    61: ('inputs that made a reader raise a foreign exception', 'CorruptFile / plain tensor', [
        'test_formats.py::test_safetensors_shapes_beyond_any_file_are_corrupt',
        'test_safe_pickle.py::test_parameter_state_cannot_replace_tensor_methods',
        'test_reliability_fuzz.py::test_generated_safetensors_headers_raise_only_our_errors',
        'test_reliability_fuzz.py::test_generated_pickles_raise_only_our_errors',
        'test_reliability_fuzz.py::test_generated_pngs_raise_only_our_errors',
    ]),
    62: ('hostile ModelSpec / provenance metadata in a safetensors header', 'ignored with a note', [
        'test_modelspec.py::test_hostile_metadata_values_are_ignored_with_a_note',
        'test_modelspec.py::test_provenance_of_the_wrong_shape_is_not_used',
        'test_modelspec.py::test_a_changed_file_does_not_pass_its_metadata',
        'test_modelspec.py::test_description_with_markup_is_kept_as_text',
    ]),
    63: ('a UI folder with files ui-sync did not write, links, edits, a bad manifest', 'conflict / UsageError', [
        'test_uisync.py::test_a_file_it_did_not_write_is_never_overwritten',
        'test_uisync.py::test_a_file_changed_by_hand_is_left_alone',
        'test_uisync.py::test_cli_errors_change_nothing',
        'test_uisync.py::test_an_interrupted_run_is_finished_by_the_next',
    ]),
    64: ('hostile caption files', 'ImageError / UsageError', [
        'test_trainer_captions.py::test_hostile_captions_are_refused_without_echoing_them',
        'test_trainer_captions.py::test_huge_and_non_file_captions_are_refused',
        'test_trainer_captions.py::test_cli_caption_errors_fail_before_the_model_loads',
    ]),
    65: ('hostile plan files', 'UsageError', [
        'test_trainer_plan.py::test_bad_plans_are_refused_before_anything_loads',
        'test_trainer_plan.py::test_plan_files_are_read_with_a_size_cap',
    ]),
    66: ('hostile progress.json in a run folder', 'listed with a problem, never served', [
        'test_progress_file.py::test_hostile_progress_files_are_refused_with_a_problem_and_never_served',
        'test_progress_file.py::test_a_symlinked_progress_file_or_fifo_is_not_read',
    ]),
    67: ('hostile LoRA bundles', 'bundle rejected / file refused', [
        'test_bundle_emb.py::test_hostile_bundles',
        'test_bundle_emb.py::test_too_many_bundles_refuse_the_file',
        'test_bundle_emb.py::test_a_huge_declared_bundle_is_refused_from_the_header',
    ]),
    68: ('hostile requests and user text in serve', '400 / 403, escaped', [
        'test_web.py::test_requests_naming_another_host_are_refused',
        'test_web.py::test_writes_need_the_sessions_csrf_token_a_post_and_this_origin',
        'test_web.py::test_hostile_sidecar_text_is_inert_on_every_page',
    ]),
}  # fmt: skip


@cache
def _functions(filename: str) -> frozenset[str]:
    path = TESTS / filename
    if not path.is_file():
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    )


def _exists(ref: str) -> bool:
    filename, _, function = ref.partition("::")
    return function in _functions(filename)


@pytest.mark.parametrize("item", sorted(COVERAGE))
def test_every_bad_input_has_tests(item: int) -> None:
    _what, _error, refs = COVERAGE[item]
    if not refs:
        pytest.xfail(f"bad input {item}: no test yet")
    missing = [r for r in refs if not _exists(r)]
    assert missing == [], f"bad input {item}: these tests do not exist: {missing}"


def test_the_table_covers_every_item_without_gaps() -> None:
    """1-39 from ``reference/bad-inputs.md``; 40 on, inputs found later (issue
    "What real users bring")."""
    assert sorted(COVERAGE) == list(range(1, max(COVERAGE) + 1))
    assert max(COVERAGE) >= 51


def test_reliability_md_lists_every_item_and_its_tests() -> None:
    text = RELIABILITY.read_text(encoding="utf-8")
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| *(\d+) *\|.*$", text, re.M)}
    missing_items = [i for i in COVERAGE if i not in rows]
    assert missing_items == []
    unlisted = [
        f"{item}: {ref.split('::')[1]}"
        for item, (_w, _e, refs) in COVERAGE.items()
        for ref in refs
        if ref.split("::")[1] not in rows[item]
    ]
    assert unlisted == []
