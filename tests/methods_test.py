"""Tests for the method registry: paper conventions per method and scoped registration."""

import ml_collections
import pytest

from incseg_jax import losses
from incseg_jax import methods

# The options that `conventions=paper` sets, per term, as docs/methods.md
# documents them (the equations as written where the public code differs).
# Before they became `Method.paper_options` they were one global table,
# applied to every method using the term; each method must still get exactly
# these for its terms.
PAPER = {
    "kd_cls": {"student_softmax": "all", "pixels": "all", "reduction": "sum"},  # Eq. 3
    "kd_cls_t": {"student_softmax": "all", "pixels": "all", "reduction": "sum"},  # Eqs. 4-5
    "kd_enc": {"reduction": "sum"},  # Eq. 6: squared Frobenius norm per image
    "kd_dec": {"reduction": "sum"},  # Eq. 7
    "unbiased_kd": {"class_reduction": "sum"},  # MiB Eq. 15
    "ucd": {"denominator": "negatives"},  # UCD Eq. 8 as printed
}

COMBINATIONS = ("ef+kd_cls", "ef+kd_cls_t", "e2lf+kd_enc", "kd_enc+kd_dec", "ef+mib", "e2lf+spkd")


def expected_options(method: methods.Method, conventions: str) -> dict:
  """config.loss_options as a dict: every option's default, the method's over them, PAPER over those for `paper`."""
  out = {}
  for term in method.losses:
    opts = dict(losses.option_defaults(term), **method.options.get(term, {}))
    if conventions == "paper":
      opts.update(PAPER.get(term, {}))
    out[term] = opts
  return out


def applied(name: str, conventions: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"method": name, "losses": {}, "loss_options": {}, "task": "15-1"})
  methods.apply_to_config(config, conventions)
  return config


@pytest.mark.parametrize("name", methods.names() + COMBINATIONS)
def test_paper_options_are_the_documented_ones(name):
  method = methods.get(name)
  assert {t: dict(o) for t, o in method.paper_options.items()} == {t: PAPER[t] for t in method.losses if t in PAPER}
  for conventions in ("code", "paper"):
    config = applied(name, conventions)
    assert config.losses.to_dict() == dict(method.losses)
    assert config.loss_options.to_dict() == expected_options(method, conventions), conventions
    assert config.task == ("joint" if method.joint else "15-1")


def test_paper_options_change_only_what_the_paper_writes():
  # Spot checks of the table above against the methods' defaults.
  kd_cls_t = applied("kd_cls_t", "paper").loss_options.kd_cls_t.to_dict()
  assert kd_cls_t == dict(losses.option_defaults("kd_cls_t"), student_softmax="all", pixels="all", reduction="sum",
                          temperature=10.0)
  assert applied("ilt", "paper").loss_options.kd_enc.reduction == "sum"
  assert applied("ilt", "paper").loss_options.lwf.to_dict() == losses.option_defaults("lwf")
  assert applied("mib_ucd", "paper").loss_options.unbiased_kd.class_reduction == "sum"
  assert applied("plop_ucd", "paper").loss_options.ucd.denominator == "negatives"
  assert applied("plop", "paper").loss_options.to_dict() == applied("plop", "code").loss_options.to_dict()


def test_unknown_conventions_are_refused():
  with pytest.raises(ValueError, match=r"conventions='papers': expected one of \['code', 'paper'\]"):
    applied("ft", "papers")


def test_combination_takes_the_union_of_paper_options():
  a = methods.Method(name="test_a", losses={"ce": 1.0, "kd_enc": 1.0}, paper_options={"kd_enc": {"reduction": "sum"}})
  b = methods.Method(name="test_b", losses={"ce": 1.0, "kd_dec": 1.0}, paper_options={"kd_dec": {"reduction": "sum"}})
  c = methods.Method(name="test_c", losses={"ce": 1.0, "kd_enc": 1.0}, paper_options={"kd_enc": {"reduction": "mean"}})
  plain = methods.Method(name="test_plain", losses={"ce": 1.0, "kd_enc": 1.0})
  with methods.registered(a), methods.registered(b), methods.registered(c), methods.registered(plain):
    assert methods.get("test_a+test_b").paper_options == {"kd_enc": {"reduction": "sum"},
                                                           "kd_dec": {"reduction": "sum"}}
    assert methods.get("test_a+test_plain").paper_options == {"kd_enc": {"reduction": "sum"}}
    with pytest.raises(ValueError, match="parts give loss 'kd_enc' different paper options"):
      methods.get("test_a+test_c")


def test_paper_options_of_an_unused_term_are_refused():
  bad = methods.Method(name="test_bad", losses={"ce": 1.0}, paper_options={"kd_enc": {"reduction": "sum"}})
  with pytest.raises(ValueError, match=r"paper_options for terms it does not use: \['kd_enc'\]"):
    methods.register(bad)
  with pytest.raises(ValueError, match="paper_options for terms it does not use"):
    with methods.registered(bad):
      pass
  assert "test_bad" not in methods.names()


# ----------------------------------------------------------------------------------------
# Scoped registration
# ----------------------------------------------------------------------------------------


def test_methods_registered_adds_and_removes():
  m = methods.Method(name="test_scoped", losses={"ce": 1.0})
  assert "test_scoped" not in methods.names()
  with methods.registered(m) as got:
    assert got is m and methods.get("test_scoped") is m and "test_scoped" in methods.names()
  assert "test_scoped" not in methods.names()
  with pytest.raises(RuntimeError), methods.registered(m):
    raise RuntimeError("removed on the way out of an exception too")
  assert "test_scoped" not in methods.names()


def test_methods_registered_restores_a_previous_entry():
  original = methods.get("ft")
  replacement = methods.Method(name="ft", losses={"ce": 2.0})
  with methods.registered(replacement):
    assert methods.get("ft") is replacement
  assert methods.get("ft") is original
  with pytest.raises(ValueError, match="registered twice"):
    methods.register(replacement)  # permanent registration still refuses a duplicate


def test_methods_registered_checks_loss_names():
  with pytest.raises(ValueError, match="unknown loss 'test_no_such_term'"):
    with methods.registered(methods.Method(name="test_unknown_loss", losses={"test_no_such_term": 1.0})):
      pass
  assert "test_unknown_loss" not in methods.names()


@pytest.mark.parametrize("field,value", [("incremental_lr", "base"), ("unseen_eval", "bg"), ("head", "mlp")])
def test_methods_registered_checks_field_values(field, value):
  method = methods.Method(name="test_bad_field", losses={"ce": 1.0}, **{field: value})
  with pytest.raises(ValueError, match=rf"method 'test_bad_field': {field}={value!r} is unknown; expected one of"):
    with methods.registered(method):
      pass


def _zero_loss(inputs, **options):
  del inputs, options
  return 0.0


def test_losses_registered_adds_and_removes():
  assert "test_zero" not in losses.names()
  with losses.registered("test_zero", _zero_loss, needs_teacher=True) as fn:
    assert fn is _zero_loss and losses.get("test_zero") is _zero_loss and losses.needs_teacher("test_zero")
    # A method using the scoped term can be scoped inside it.
    with methods.registered(methods.Method(name="test_zero_method", losses={"ce": 1.0, "test_zero": 1.0})):
      assert applied("test_zero_method", "code").losses.to_dict() == {"ce": 1.0, "test_zero": 1.0}
  assert "test_zero" not in losses.names() and "test_zero_method" not in methods.names()
  with pytest.raises(ValueError, match="unknown loss 'test_zero'"):
    losses.needs_teacher("test_zero")
  with pytest.raises(RuntimeError), losses.registered("test_zero", _zero_loss):
    raise RuntimeError("removed on the way out of an exception too")
  assert "test_zero" not in losses.names()


def test_losses_registered_restores_a_previous_entry_and_its_teacher_flag():
  ucd, ce = losses.get("ucd"), losses.get("ce")
  with losses.registered("ucd", _zero_loss):  # needs_teacher=False over a term that needs one
    assert losses.get("ucd") is _zero_loss and not losses.needs_teacher("ucd")
  assert losses.get("ucd") is ucd and losses.needs_teacher("ucd")
  with losses.registered("ce", _zero_loss, needs_teacher=True):
    assert losses.needs_teacher("ce")
  assert losses.get("ce") is ce and not losses.needs_teacher("ce")
  with pytest.raises(ValueError, match="registered twice"):
    losses.register("ce")(_zero_loss)


def test_a_classification_term_of_one_part_replaces_the_plain_ce_of_another():
  both = methods.get("mib+ewc")
  assert dict(both.losses) == {"unbiased_ce": 1.0, "unbiased_kd": 10.0, "ewc": 500.0}
  assert both.void_as_background and both.head_init is methods.get("mib").head_init
  assert dict(methods.get("ef+kd_cls_t").losses)["ce"] == 1.0  # two plain-CE parts keep it


def test_state_terms_are_the_weighted_stateful_terms():
  config = ml_collections.ConfigDict({"losses": {"ce": 1.0, "ewc": 500.0, "pi": 0.0},
                                      "loss_options": {"ewc": {"alpha": 0.5}}})
  assert [(n, r.name, o) for n, r, o in methods.state_terms(config)] == [("ewc", "ewc", {"alpha": 0.5})]
