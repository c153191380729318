"""PTS settings and inputs: bad values fail early, with messages that say what to change."""

import pytest
from pydantic import ValidationError

from phiforge.errors import ConfigError, DataError
from phiforge.posttrain.pts import PTSConfig, PTSQuery, search
from phiforge.testing.planted import PlantedOracle, PlantedPolicy, PlantedTask


@pytest.mark.parametrize("field, value", [
    ("p_gap", 0.0), ("p_gap", 1.5), ("temperature", 0.0), ("top_p", 0.0), ("max_tokens", 0),
    ("round_size", 0), ("max_rollouts", 0), ("z", -1.0), ("screen_z", 0.0), ("query_min_p", -0.1),
    ("split", "middle"), ("pairs_per_pivot", -1), ("seed", -3), ("solutions_per_query", 0),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as err:
        PTSConfig(**{field: value})
    assert field in str(err.value)


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        PTSConfig(pgap=0.3)


def test_cross_field_checks_say_what_to_change():
    with pytest.raises(ValidationError, match="query_min_p=0.9 is above query_max_p=0.8"):
        PTSConfig(query_min_p=0.9)
    with pytest.raises(ValidationError, match=r"multiple of round_size=8 \(e.g. 64\)"):
        PTSConfig(max_rollouts=60)


def test_defaults_and_the_naive_baseline():
    cfg = PTSConfig()
    assert (cfg.p_gap, cfg.temperature, cfg.query_min_p, cfg.query_max_p, cfg.split) == (0.2, 1.0, 0.2, 0.8, "logprob")
    assert cfg.adaptive and cfg.reuse_rollouts and cfg.uses_segment_mass and cfg.pairs_per_pivot == 1
    naive = PTSConfig.naive(max_rollouts=32)
    assert not naive.adaptive and naive.split == "count" and not naive.reuse_rollouts
    assert not naive.uses_segment_mass and naive.max_rollouts == 32
    assert not PTSConfig(temperature=0.7).uses_segment_mass  # the log-probs no longer describe the sampler


def test_an_empty_prompt_names_the_query():
    policy = PlantedPolicy([PlantedTask(6, 0.5)])
    with pytest.raises(DataError, match="'broken'.*prompt_ids is empty"):
        search(policy, [PTSQuery("ok", policy.prompt_ids(0), "yes"), PTSQuery("broken", [], "yes")],
               PlantedOracle())


def test_duplicate_ids_and_bad_token_ids_are_refused():
    policy = PlantedPolicy([PlantedTask(6, 0.5)])
    with pytest.raises(DataError, match="'a': duplicate id"):
        search(policy, [PTSQuery("a", [1000, 2], "yes"), PTSQuery("a", [1000, 2], "yes")], PlantedOracle())
    with pytest.raises(DataError, match="'b': prompt_ids must be non-negative integer"):
        search(policy, [PTSQuery("b", [1000, "2"], "yes")], PlantedOracle())


def test_a_backend_without_tokenizer_needs_decode():
    policy = PlantedPolicy([PlantedTask(6, 0.5)])
    policy.tokenizer = None
    with pytest.raises(ConfigError, match="pass decode="):
        search(policy, [PTSQuery("a", policy.prompt_ids(0), "yes")], PlantedOracle())


def test_an_oracle_returning_the_wrong_number_of_verdicts_is_caught():
    class Short:
        def check_many(self, responses, references):
            return []

    policy = PlantedPolicy([PlantedTask(6, 0.5)])
    with pytest.raises(ConfigError, match="0 verdicts for 8 responses"):
        search(policy, [PTSQuery("a", policy.prompt_ids(0), "yes")], Short())


def test_no_queries_is_an_empty_result():
    result = search(PlantedPolicy([]), [], PlantedOracle())
    assert result.pivots == [] and result.stats.rounds == 0 and result.stats.queries == 0
