"""The networks: the frozen video backbones that give the feature map m, and the FTP model on top of it (feature
processors, alignment heads, integration and classifier; paper §3.1)."""
