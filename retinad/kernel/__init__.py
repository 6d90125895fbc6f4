"""Everything that talks to the kernel: features, compile, ABI, maps, attach, links, BTF."""
