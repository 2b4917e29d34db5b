"""tinyvlm: small vision-language models you can train on a CPU."""
