module vllm-nginx/bench/capacity

go 1.22
