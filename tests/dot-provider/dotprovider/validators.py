"""Claims for the test users: django-oauth-toolkit puts only `sub` (the user's primary key)
into ID tokens and userinfo unless the validator adds more. The claims are filtered by the
granted scopes (`oidc_claim_scope`): name with `profile`, email with `email`."""

from oauth2_provider.oauth2_validators import OAuth2Validator


class ProfileClaimsValidator(OAuth2Validator):
    def get_additional_claims(self, request):
        user = request.user
        return {
            "name": f"User {user.username}",
            "preferred_username": user.username,
            "email": user.email,
            "email_verified": True,
        }
