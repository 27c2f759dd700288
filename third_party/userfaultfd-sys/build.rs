// LegoVMM's copy of userfaultfd-sys 0.6.0: the bindings bindgen generates from <linux/userfaultfd.h>
// are checked in (src/bindings.rs, generated on Debian 12 with libclang 14 against the
// 6.1 uapi headers), so building needs no libclang. See third_party/README.md.
fn main() {
    cc::Build::new()
        .file("src/consts.c")
        .compile("userfaultfd_sys_consts");
}
