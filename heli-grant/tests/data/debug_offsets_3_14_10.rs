// `_Py_DebugOffsets` of Debian's CPython 3.14.10, as the project's notes on
// PEP 768 measured it: (group, field, byte position, value). Included by
// the unit tests of `src/python/offsets.rs` and by `tests/pep768.rs`.
&[
    ("header", "version", 8, 0x030E_0AF0),
    ("header", "free_threaded", 16, 0),
    ("runtime_state", "size", 24, 0x4d4c8),
    ("runtime_state", "interpreters_head", 40, 0x328),
    ("interpreter_state", "id", 56, 0x1c70),
    ("interpreter_state", "next", 64, 0x1c68),
    ("interpreter_state", "threads_head", 72, 0x1cb0),
    ("interpreter_state", "threads_main", 80, 0x1cc0),
    ("thread_state", "next", 192, 0x8),
    ("thread_state", "native_thread_id", 224, 0xa0),
    ("debugger_support", "eval_breaker", 712, 0x18),
    ("debugger_support", "remote_debugger_support", 720, 0x130),
    ("debugger_support", "remote_debugging_enabled", 728, 0x1f8c),
    ("debugger_support", "debugger_pending_call", 736, 0),
    ("debugger_support", "debugger_script_path", 744, 4),
    ("debugger_support", "debugger_script_path_size", 752, 512),
]
