"""Users' own test suites get the ``dashscope_emulator`` fixture just by installing us."""

from __future__ import annotations

import pytest


def test_fixture_is_registered_by_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_users_app="""
        from dashscope_embed import DashScopeClient

        def my_rag_app_embeds(texts):
            # A user's app reading its settings from the environment, as in production.
            return DashScopeClient().embed(texts, text_type="document").dense

        def test_app_offline(dashscope_emulator, monkeypatch):
            monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
            monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)
            vectors = my_rag_app_embeds(["offline", "test"])
            assert len(vectors) == 2 and len(vectors[0]) == 1024
            assert dashscope_emulator.stats()["texts_delivered"] == 2

        def test_faults_for_one_test(dashscope_emulator):
            dashscope_emulator.configure(error_rate=1.0)
            assert dashscope_emulator.settings.error_rate == 1.0

        def test_settings_and_counters_are_fresh_again(dashscope_emulator):
            assert dashscope_emulator.settings.error_rate == 0.0
            assert dashscope_emulator.stats()["requests"] == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
