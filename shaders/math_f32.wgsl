// f32 elementary functions: the hardware builtins.

fn exp_r(x: real) -> real {
    return exp(x);
}

fn log_r(x: real) -> real {
    return log(x);
}

fn tanh_r(x: real) -> real {
    return tanh(x);
}
