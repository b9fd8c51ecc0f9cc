"""Azure SDK credentials that read the token graphcred keeps fresh in a mounted token Secret.

    from graphcred_client import MountedTokenCredential
    from msgraph import GraphServiceClient

    credential = MountedTokenCredential("/var/run/graphcred")
    graph = GraphServiceClient(credentials=credential, scopes=["https://graph.microsoft.com/.default"])
    users = await graph.users.get()

The token is never logged, nor shown in a repr or an exception. One dependency: azure-core.
"""

from ._async_credential import AsyncMountedTokenCredential
from ._credential import MountedTokenCredential
from ._token_file import DEFAULT_DIRECTORY, DEFAULT_MARGIN

__all__ = ["DEFAULT_DIRECTORY", "DEFAULT_MARGIN", "AsyncMountedTokenCredential", "MountedTokenCredential"]
