"""Body templates: a subscription may reshape each event into the body its destination expects
(a Slack or Discord incoming webhook, a Telegram ``sendVideo`` call), rendered in a sandbox.

Templates are Jinja2, rendered by an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`: no
attribute starting with ``_`` (so no ``__class__``, ``__globals__``, ``mro``), no mutation of the
event, no ``format`` method, no includes. The context is the delivered body's ``type``,
``timestamp`` and ``data``, the whole body as ``event`` and its id as ``event_id``.

A template is user code, so rendering is bounded three ways (:class:`Limits`):

- time: every loop iteration and every call (macros, methods) checks a deadline, so a template that
  loops or recurses forever stops there. The limit is CPU time of the rendering thread, so a busy
  machine that takes the thread off its core does not fail a valid template; the wall clock is only
  the cheap first check (a thread CPU clock read costs ~1.3 µs, the wall clock ~0.1 µs), and a
  render that has not finished within ``WALL_FACTOR`` times the limit of wall time stops anyway;
- work: every piece of text the template produces, kept or not (filter and method results, ``~``,
  ``+``, ``*``, ``%``, captured blocks, output), counts against a budget, and a repetition, a
  padding width or a ``replace`` is refused *before* it would run past it, so a template cannot
  allocate gigabytes in one step;
- output: the rendered body may not exceed ``max_bytes``.

Instrumenting the template (its syntax tree is rewritten before compiling: loop sources, ``~`` and
output pieces pass through checking filters) keeps rendering in-process — a render costs
microseconds, no process hop — while the limits hold whatever the template does. Rendering is
synchronous and runs on the calling thread for at most ``Limits.seconds`` of its CPU time.

Why a time limit alone is not enough: ``"x" * 10**10`` or ``9 ** 9 ** 9`` is one Python operation
that no deadline interrupts; why a size check after the fact is not enough: it would run first.
The language and the limits are documented in docs/filters-and-templates.md.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

CONTENT_TYPES = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
)
"""What a template may declare it produces (the ``Content-Type`` of each delivery)."""

DEFAULT_CONTENT_TYPE = "application/json"


class TemplateError(ValueError):
    """A template that cannot be compiled, or a render that failed or broke a limit.
    ``transient``: it ran out of time, which a less busy moment might not."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Limits:
    """``seconds`` of CPU per render; ``max_bytes`` of rendered body; ``work_bytes`` of text
    produced along the way; ``max_source`` characters of template; ``max_int_bits`` of any
    integer made."""

    seconds: float = 0.1
    max_bytes: int = 64 * 1024
    work_bytes: int = 1024 * 1024
    max_source: int = 16 * 1024
    max_int_bits: int = 4096


WALL_FACTOR = 10
"""A render stops after this many times ``Limits.seconds`` of wall time whatever its CPU time: the
loop it runs on is held that long."""


@dataclass(slots=True)
class _Budget:
    deadline: float
    """Wall-clock instant at which the CPU time spent is next looked at."""
    cpu_started: float
    wall_cutoff: float
    work_left: int


_BUDGET: ContextVar[_Budget | None] = ContextVar("reelhook_template_budget", default=None)

# printf-style widths and precisions ("%-999999s", "%.5000f"), for ``%`` and the format filter.
_PRINTF_NUMBER = re.compile(r"%[#0\- +]*(\d*)(?:\.(\d*))?")
_LOOP = "reelhook_loop"
_COUNT = "reelhook_count"


class _Instrument(NodeTransformer):
    """Routes loop sources, ``~`` results and output pieces through the checking filters."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, _COUNT, [], [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            nodes.Filter(
                nodes.Const(piece.data) if isinstance(piece, nodes.TemplateData) else piece,
                _COUNT,
                [],
                [],
                None,
                None,
                lineno=piece.lineno,
            )
            for piece in node.nodes
        ]
        return node


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, limits: Limits) -> None:
        # Chainable: ``data.metadata.channel`` is simply undefined (falsy, renders empty) on an
        # event without metadata, so one template can serve several event types.
        super().__init__(
            autoescape=False, keep_trailing_newline=True, undefined=jinja2.ChainableUndefined
        )
        self.limits = limits
        for name in ("lipsum",):
            self.globals.pop(name, None)
        self.filters.pop("random", None)
        self.filters = {name: self._guarded(f) for name, f in self.filters.items()}
        # Functions, not bound methods: pass_context marks its argument with an attribute.
        self.filters[_LOOP] = jinja2.pass_context(lambda ctx, value: self._loop(ctx, value))
        self.filters[_COUNT] = jinja2.pass_context(lambda ctx, value: self._count(ctx, value))

    # --- budget ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        budget = _BUDGET.get()
        if budget is None:
            return
        now = time.monotonic()
        if now <= budget.deadline:
            return
        # The wall clock ran out; the CPU time decides. Less CPU than the limit means the thread
        # waited (for a core or the GIL): look again once the rest of the limit has passed.
        left = self.limits.seconds - (time.thread_time() - budget.cpu_started)
        if left <= 0 or now >= budget.wall_cutoff:
            raise TemplateError(
                f"rendering took longer than {self.limits.seconds:g} s", transient=True
            )
        budget.deadline = now + left

    def _spend(self, size: int) -> None:
        budget = _BUDGET.get()
        if budget is None:
            return
        budget.work_left -= size
        if budget.work_left < 0:
            raise TemplateError(
                f"the template produces more than {self.limits.work_bytes} bytes of text"
            )

    def _afford(self, size: int) -> None:
        """Refuse an operation that would produce ``size`` bytes before it runs."""
        budget = _BUDGET.get()
        left = budget.work_left if budget is not None else self.limits.work_bytes
        if size > left:
            raise TemplateError(
                f"the template produces more than {self.limits.work_bytes} bytes of text"
            )

    def _measure(self, value: Any) -> int:
        """Roughly how many bytes ``str(value)`` makes, refused early past the work budget."""
        limit = self.limits.work_bytes
        total = 0
        stack = [value]
        seen = 0
        while stack:
            item = stack.pop()
            seen += 1
            if not seen % 4096:
                self._tick()  # a walk over a long list is itself work to bound
            if isinstance(item, str | bytes):
                total += len(item)
            elif isinstance(item, Mapping):
                total += 2 + 4 * len(item)
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                total += 2 + 2 * len(item)
                stack.extend(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                self._check_int(item)
                total += 8
            else:
                total += 8
            if total > limit:
                raise TemplateError(f"the template produces more than {limit} bytes of text")
        return total

    def _check_int(self, value: Any) -> None:
        if isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise TemplateError(f"a number larger than {self.limits.max_int_bits} bits")

    def _result(self, value: Any) -> Any:
        if isinstance(value, str | bytes):
            self._spend(len(value))
        elif isinstance(value, int):
            self._check_int(value)
        elif isinstance(value, list | tuple | dict):
            self._spend(self._measure(value))
        return value

    def _check_widths(self, fmt: Any) -> None:
        if isinstance(fmt, str):
            for width, precision in _PRINTF_NUMBER.findall(fmt):
                for number in (width, precision):
                    if number and (len(number) > 7 or int(number) > self.limits.max_bytes):
                        raise TemplateError(f"a format width above {self.limits.max_bytes}")

    def _check_args(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and arg > self.limits.max_bytes:
                raise TemplateError(f"a size argument above {self.limits.max_bytes}")
            self._measure(arg)

    # --- hooks ----------------------------------------------------------------------------------

    # Every filter here takes the context: Jinja folds a filter that does not into a constant at
    # compile time, outside any budget ("{% for %}{{ 'x'|center(60000) }}" would append a folded
    # 60 kB string per iteration without counting it).

    def _loop(self, context: Context, iterable: Any) -> Iterator[Any]:
        if isinstance(iterable, jinja2.Undefined):
            return
        for item in iterable:
            self._tick()
            yield item

    def _count(self, context: Context, value: Any) -> Any:
        self._tick()
        if isinstance(value, str):
            self._spend(len(value))
        elif not isinstance(value, jinja2.Undefined):
            self._spend(self._measure(value))
        return value

    def _guarded(self, f: Callable[..., Any]) -> Callable[..., Any]:
        """A built-in filter checked like a call; ``replace`` and ``format`` are estimated
        before they run."""
        passes = getattr(getattr(f, "jinja_pass_arg", None), "name", None)
        name = getattr(f, "__name__", "")

        def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
            self._tick()
            value, extra = (args[0], args[1:]) if args else (None, ())
            self._measure(value)
            self._check_args([*extra, *kwargs.values()])
            if name == "do_replace" and len(args) >= 3:
                self._check_replace(value, args[1], args[2])
            if name == "do_format":
                self._check_widths(value)
            if passes == "context":
                args = (context, *args)
            elif passes == "eval_context":
                args = (context.eval_ctx, *args)
            elif passes == "environment":
                args = (context.environment, *args)
            return self._result(f(*args, **kwargs))

        guarded.__name__ = name
        return jinja2.pass_context(guarded)

    def _check_replace(self, text: Any, old: Any, new: Any) -> None:
        text, old, new = str(text), str(old), str(new)
        count = len(text) + 1 if not old else text.count(old)
        self._afford(len(text) + count * max(0, len(new) - len(old)))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self._tick()
        if __obj is not __self.globals["range"]:  # the sandbox's range caps its own length
            __self._check_args([*args, *kwargs.values()])
        if getattr(__obj, "__name__", "") == "replace" and isinstance(
            getattr(__obj, "__self__", None), str
        ):
            __self._check_replace(__obj.__self__, *[*args, "", ""][:2])
        return __self._result(super().call(__context, __obj, *args, **kwargs))

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # Refused outright: by default it renders as an empty string, which hides the attempt.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format is refused by is_safe_attribute, not wrapped

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # str.format and format_map can pad to any width in one call.
        if isinstance(obj, str) and attr in ("format", "format_map"):
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    self._afford(self._measure(seq) * max(times, 0))
            if isinstance(left, int) and isinstance(right, int):
                self._check_int(1 << (left.bit_length() + right.bit_length()))
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() * max(right, 0) > self.limits.max_int_bits
            ):
                raise TemplateError(f"a number larger than {self.limits.max_int_bits} bits")
        elif operator == "%":
            self._check_widths(left)
            self._measure(right)
        else:
            self._afford(self._measure(left) + self._measure(right))
        return self._result(super().call_binop(context, operator, left, right))


class Renderer:
    """Compiles body templates (cached by source) and renders events through them."""

    def __init__(self, limits: Limits | None = None, *, cache_size: int = 512) -> None:
        self.limits = limits or Limits()
        self._env = _Sandbox(self.limits)
        self._cache: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._cache_size = cache_size

    def compile(self, source: str) -> jinja2.Template:
        """The compiled template; :class:`TemplateError` for one too long or not valid Jinja."""
        cached = self._cache.get(source)
        if cached is not None:
            self._cache.move_to_end(source)
            return cached
        if len(source) > self.limits.max_source:
            raise TemplateError(f"longer than {self.limits.max_source} characters")
        try:
            tree = self._env.parse(source)
            compiled = self._env.from_string(_Instrument().visit(tree))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"line {exc.lineno}: {exc.message}") from None
        except RecursionError:
            raise TemplateError("nested too deeply") from None
        self._cache[source] = compiled
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled

    def render(
        self, source: str, content_type: str, event_id: str, body: Mapping[str, Any]
    ) -> bytes:
        """The body to send for the event ``body`` (``{"type", "timestamp", "data"}``) sent as
        ``event_id``, UTF-8 encoded; for ``application/json`` it must be one JSON document.
        Raises :class:`TemplateError` on any failure or broken limit."""
        template = self.compile(source)
        limits = self.limits
        context = {
            "type": body.get("type"),
            "timestamp": body.get("timestamp"),
            "data": body.get("data"),
            "event": body,
            "event_id": event_id,
        }
        started = time.monotonic()
        token = _BUDGET.set(
            _Budget(
                deadline=started + limits.seconds,
                cpu_started=time.thread_time(),
                wall_cutoff=started + WALL_FACTOR * limits.seconds,
                work_left=limits.work_bytes,
            )
        )
        try:
            pieces: list[str] = []
            size = 0
            for piece in template.generate(context):
                size += len(piece)
                if size > limits.max_bytes:
                    raise TemplateError(
                        f"the rendered body is larger than {limits.max_bytes} bytes"
                    )
                pieces.append(piece)
            text = "".join(pieces)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"not allowed in a template: {exc}") from None
        except RecursionError:
            raise TemplateError("the template recursed too deeply") from None
        except MemoryError:
            raise TemplateError("the template ran out of memory") from None
        except Exception as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}"[:500]) from None
        finally:
            _BUDGET.reset(token)
        encoded = text.encode()
        if len(encoded) > limits.max_bytes:
            raise TemplateError(f"the rendered body is larger than {limits.max_bytes} bytes")
        if content_type == "application/json":
            try:
                json.loads(encoded)
            except ValueError as exc:
                raise TemplateError(f"the rendered body is not valid JSON: {exc}") from None
        return encoded
