"""Which project ids name a project a client may write (engine/common/_project.py), and the
producer refusing the others up front, naming the setting, rather than in dead letters."""

from __future__ import annotations

import re

import pytest

from engine import Engine
from engine.common._errors import ConfigError
from engine.common._project import name_problem, project_path, shape_problem

REFUSED = [
    ("e/..", "has the project '..', which no link can hold"),
    ("./p", "has the entity '.', which no link can hold"),
    ("e/ ", "has a blank project"),
    ("/p", "has an empty entity"),
    ("e/", "has an empty project"),
    ("e/p\n", r"has a control character ('\n') in its project"),
    ("e/p/q", "is not entity/project (one slash)"),
    ("p", "is not entity/project (one slash)"),
]  # fmt: skip


@pytest.mark.parametrize("project, said", REFUSED)
def test_names_no_client_could_mean_are_refused_saying_why(project, said):
    assert name_problem(project).startswith(said)


@pytest.mark.parametrize("project", ["e/p%zz", "e/p?x=1#frag", "my-team/my eval", "e/...", "e/.p", "é/p:1"])
def test_any_other_character_is_taken(project):
    assert name_problem(project) is None


def test_the_shape_alone_lets_a_name_stored_earlier_be_read():
    assert shape_problem("e/..") is None and shape_problem("e/p/q") is not None


@pytest.mark.parametrize("project, said", REFUSED)
def test_engine_refuses_such_a_project_at_start_naming_the_setting(project, said):
    with pytest.raises(ConfigError, match=f"^project: {re.escape(repr(project))} {re.escape(said)}"):
        Engine(url="http://127.0.0.1:9", project=project, start_sender=False)


def test_a_name_goes_into_a_v2_path_percent_encoded_part_by_part():
    assert project_path("e/p%zz?x=1#frag") == "e/p%25zz%3Fx%3D1%23frag"
    assert project_path("my-team/my eval") == "my-team/my%20eval"
