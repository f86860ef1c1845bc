"""The device mesh, the one logical-axis rules table, and placing parameters on the mesh.

Model code names axes logically ('embed', 'heads', ...); only this module knows mesh axes
('data', 'fsdp', 'tensor'; 'population' for a vmapped population). A dimension whose size a
mesh axis does not divide is replicated instead of failing, so tiny test models still run on
any mesh.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
# The leading axis of a vmapped population's mesh (population_mesh): one group of members per
# slice of devices. No logical name maps to it; the population's vmap adds it to every array.
POPULATION = "population"

# logical name -> mesh axes it is split over (None: replicated). Batch goes over data and fsdp
# (fsdp shards parameters and also takes a share of the batch, as in ZeRO-3).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("norm", None),
  ("positions", None),
  ("labels", None),
  ("lora_rank", None),
  ("layers", None),  # the leading axis of stacked (scanned) layer weights
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)

_active: list[tuple[Mesh, tuple]] = []


def make_mesh(
  data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None,
  population: int = -1,
) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 for 'the rest of the devices'."""
  del population  # config.mesh.population: read by population_mesh only (one run, no population)
  return _mesh({"data": data, "fsdp": fsdp, "tensor": tensor}, devices)


def population_mesh(
  members: int, population: int = -1, data: int = -1, fsdp: int = 1, tensor: int = 1,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A (population, data, fsdp, tensor) mesh for `members` vmapped copies of one model.

  The members split into `population` groups, one group per slice of devices; within a slice
  each member is laid over (data, fsdp, tensor) exactly as a single run is. -1: the most groups
  that divide both the members and the devices the member axes leave (so 8 members on 8
  devices train one per device, and 1 device or 5 members on 8 devices keep one group).
  """
  devices = list(devices if devices is not None else jax.devices())
  fixed = fsdp * tensor * (data if data != -1 else 1)
  if population == -1:
    population = math.gcd(members, max(len(devices) // fixed, 1))
  keep = "-1 to choose, 1 to keep every member on every device"
  if population < 1 or members % population:
    raise ConfigError(f"mesh.population={population}: {members} population members do not split "
                      f"into {population} equal groups; set --config.mesh.population to a divisor "
                      f"of {members} ({keep})")
  if population * fixed > len(devices):
    raise ConfigError(f"mesh.population={population}: {population} groups of {fixed} devices "
                      f"(mesh.data x fsdp x tensor) need {population * fixed} devices, have "
                      f"{len(devices)}; set --config.mesh.population or mesh.data lower ({keep})")
  return _mesh({POPULATION: population, "data": data, "fsdp": fsdp, "tensor": tensor}, devices)


def _mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  sizes = dict(sizes)
  unknown = [k for k, v in sizes.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {sizes}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if any(v == 0 or v < -1 for v in sizes.values()):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
  if not unknown and known < len(devices):
    devices = devices[:known]  # an explicit smaller mesh (e.g. 1 device for a baseline run)
  if unknown:
    if len(devices) % known:
      raise ValueError(f"mesh: {len(devices)} devices do not divide into {sizes}")
    sizes[unknown[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh: {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}")
  try:
    grid = mesh_utils.create_device_mesh(tuple(sizes.values()), devices=devices)
  except Exception:  # noqa: BLE001 - fake CPU devices have no topology; plain order is fine
    grid = np.asarray(devices).reshape(tuple(sizes.values()))
  return Mesh(grid, tuple(sizes))


def logical_to_spec(
  names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
  rules=RULES,
) -> PartitionSpec:
  """PartitionSpec for logical `names`; with `shape` and `mesh`, undividable dims replicate."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    axes = table.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    if shape is not None and mesh is not None:
      # Keep the longest prefix of axes whose product divides the dimension.
      while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def variable_sharding(variable, mesh: Mesh) -> NamedSharding:
  """The sharding of an nnx Variable (abstract or concrete) from its logical names."""
  value = variable.get_value()
  names = variable.get_metadata().get("out_sharding") or (None,) * value.ndim
  return named_sharding(mesh, names, value.shape)


def state_shardings(state, mesh: Mesh):
  """A pytree of NamedShardings matching an nnx State (abstract or concrete)."""
  from flax import nnx

  def one(x):
    if isinstance(x, nnx.Variable):
      return x.replace(variable_sharding(x, mesh))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=RULES) -> Iterator[Mesh]:
  """Within this block `constrain` pins activations on `mesh` (traces must happen inside)."""
  _active.append((mesh, rules))
  try:
    yield mesh
  finally:
    _active.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  if not _active:
    return x
  mesh, rules = _active[-1]
  spec = logical_to_spec(names, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
