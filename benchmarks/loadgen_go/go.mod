module larder.dev/benchmarks/loadgen

go 1.21
